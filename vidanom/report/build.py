"""The report: one static HTML page of scored clips (what happened, where, when, and the moments
themselves), opened from disk with no server and nothing fetched.

    OUT/index.html
    OUT/assets/report.css, report.js    the page's style, and its script (sorting, playing an event)
    OUT/assets/thumbs/*.jpg             each event's peak frame with its error heatmap, small
    OUT/assets/timelines/*.png          each clip's score over time, as scoring drew it
    OUT/assets/videos/*.mp4             annotated videos (hard links to the project's, where possible)

An asset's name carries a hash of what it was made from (camera, clip, stored scores, model, frame),
so one that is already there is up to date and is not made again; assets the page no longer refers
to are removed. Thumbnails need the clip decoded again (once per clip, for all its events, up to its
last event's peak) and the β-VAE's error maps: see vidanom.revisit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if TYPE_CHECKING:
    import torch

from .. import fsutil
from ..errors import VidanomError
from ..project import Project
from ..progress import Progress, no_progress
from .stored import Stored, StoredClip, read_stored

THUMB_WIDTH = 320  # pixels, at most: a thumbnail is never wider, and never enlarged
THUMB_QUALITY = 82  # JPEG
DRAWING = 1  # bump when assets are drawn differently: every cached one is made again
ASSET_KINDS = ("thumbs", "timelines", "videos")
STATIC = ("report.css", "report.js")


@dataclass
class Event:
    """One detected segment of a clip, as the page shows it. Times in seconds from the clip's start."""

    number: int  # 1-based, in its clip
    start_frame: int
    end_frame: int  # exclusive
    peak_frame: int
    start: float
    end: float
    peak: float
    score: float
    thumb: str | None = None  # path relative to the report
    note: str | None = None  # why it has no thumbnail
    accept: str = ""  # the command that accepts it as normal

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class ClipView:
    camera: str
    name: str
    anchor: str  # the id of its section on the page
    frames: int
    duration: float  # seconds
    peak: float
    threshold: float
    version: str  # the model version that scored it
    events: list[Event]
    timeline: str | None = None
    video: str | None = None
    notes: list[str] = field(default_factory=list)  # what the reader should know: decoding, missing images


@dataclass
class ModelView:
    version: str
    current: bool
    threshold: float | None
    false_alarms: float | None  # the share of normal frames expected over the threshold
    psnr: float | None
    scenes: list[str]
    lineage: list[tuple[str, str, str]]  # (version, strategy, scene), oldest first


@dataclass
class CameraView:
    name: str
    root: str
    models: list[ModelView]
    clips: list[ClipView]
    problems: list[str]  # clips left out: their stored scores cannot be read


@dataclass
class Report:
    """What build_report wrote."""

    index: Path
    cameras: int
    clips: int
    frames: int
    seconds: float
    events: int
    made: dict[str, int]  # thumbs, timelines and videos made by this run (the rest came from the cache)
    notes: list[str]  # one line per thing the page lacks, and why


@dataclass
class _Job:
    out: Path
    videos: bool
    device: torch.device | None
    progress: Progress
    keep: set[Path] = field(default_factory=set)
    made: Counter = field(default_factory=Counter)

    def asset(self, kind: str, label: str, parts: list[object], suffix: str) -> tuple[Path, str]:
        """The file of an asset made from `parts` (and its path relative to the report), kept by the prune."""
        digest = hashlib.sha256(json.dumps([DRAWING, *parts], default=str).encode()).hexdigest()[:12]
        name = f"{_slug(label)}.{digest}{suffix}"
        path = self.out / "assets" / kind / name
        self.keep.add(path)
        return path, f"assets/{kind}/{name}"


def _slug(name: str) -> str:
    """A file-name-safe, readable stem of a user's clip name (the hash beside it keeps names apart)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name).strip("._")
    return safe[:40] or "clip"


def build_report(
    cameras: list[tuple[str, Project]],
    out: Path,
    videos: bool = False,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> Report:
    """Write the report of the scored clips of every (camera name, project) into folder out.

    videos: also make the annotated video of every clip with events that has none up to date
    (in the project's scores folder, where 'vidanom annotate' puts it). Raises VidanomError when
    nothing is scored, before anything is written.
    """
    stored = [(name, project, read_stored(project)) for name, project in cameras]
    if not any(s.clips for _, _, s in stored):
        problems = [p for _, _, s in stored for p in s.problems]
        where = ", ".join(str(p.root) for _, p in cameras)
        raise VidanomError(
            problems[0] if problems else f"nothing scored in {where} yet; run 'vidanom score VIDEO...' first"
        )
    _check_out(out)
    job = _Job(out, videos, device, progress)
    views = [_camera_view(i, name, project, s, job) for i, (name, project, s) in enumerate(stored)]
    _write_static(out)
    fsutil.write_text(out / "index.html", _render(views))
    _prune(out, job.keep)
    clips = [c for v in views for c in v.clips]
    notes = [f"{c.camera}: {c.name}: {n}" if len(views) > 1 else f"{c.name}: {n}" for c in clips for n in c.notes]
    return Report(
        out / "index.html",
        len(views),
        len(clips),
        sum(c.frames for c in clips),
        sum(c.duration for c in clips),
        sum(len(c.events) for c in clips),
        dict(job.made),
        [p for v in views for p in v.problems] + notes,
    )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise VidanomError(f"{out} is a file; name a folder for the report")
    if (out / "index.html").exists() and not (out / "assets" / STATIC[1]).exists():
        raise VidanomError(f"{out} holds an index.html that is not a vidanom report; choose another folder")


def _camera_view(index: int, name: str, project: Project, stored: Stored, job: _Job) -> CameraView:
    clips, problems = [], list(stored.problems)
    for k, clip in enumerate(stored.clips):
        job.progress("report", k, len(stored.clips), {"clip": clip.name})
        try:
            clips.append(_clip_view(f"clip-{index}-{k}", name, project, clip, job))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            problems.append(
                f"the stored summary of clip '{clip.name}' is damaged ({type(exc).__name__}: {exc}); "
                f"score it again with 'vidanom score {clip.name}'"
            )
    job.progress("report", len(stored.clips), len(stored.clips), {})
    return CameraView(name, str(project.root.resolve()), _models(stored, clips), clips, problems)


def _clip_view(anchor: str, camera: str, project: Project, clip: StoredClip, job: _Job) -> ClipView:
    s = clip.summary
    view = ClipView(
        camera,
        clip.name,
        anchor,
        int(s["frames"]),
        float(s["duration"]),
        float(s["peak_score"]),
        float(s["threshold"]),
        str(s.get("model_version", "?")),
        _events(project, clip),
    )
    if s.get("warning"):
        view.notes.append(f"when scored: {s['warning']}")
    _thumbnails(project, view, clip, job)
    view.timeline = _timeline(view, clip, job)
    view.video = _video(project, view, clip, job)
    return view


def _events(project: Project, clip: StoredClip) -> list[Event]:
    from ..accepting import accept_command, clip_name
    from ..store import ScoreStore

    out, name, root = [], clip_name(ScoreStore.of(project), clip.name), project.root.resolve()
    for i, s in enumerate(clip.summary.get("segments") or [], 1):
        peak = int(s["peak_frame"])
        out.append(
            Event(
                i,
                int(s["start_frame"]),
                int(s["end_frame"]),
                peak,
                float(s["start_time"]),
                float(s["end_time"]),
                float(clip.times[peak]),
                float(s["peak_score"]),
                accept=accept_command(name, i, root),
            )
        )
    return out


# -- assets ------------------------------------------------------------------------------------------


def _thumbnails(project: Project, view: ClipView, clip: StoredClip, job: _Job) -> None:
    """Give every event its thumbnail: from the cache, else all of the clip's missing ones in one pass."""
    wanted: dict[int, Path] = {}
    zones = project.config.score.mask  # drawn on the images
    for e in view.events:
        path, e.thumb = job.asset(
            "thumbs",
            f"{view.name}.{e.peak_frame}",
            [view.camera, view.name, clip.scored_at, view.version, e.peak_frame, THUMB_WIDTH, zones],
            ".jpg",
        )
        if not path.exists():
            wanted[e.peak_frame] = path
    if not wanted:
        return
    reason = "its peak frame was not found when the clip was decoded again; score it again"
    try:
        missing = _draw_thumbnails(project, Path(clip.summary["source"]), wanted, job)
    except VidanomError as exc:
        missing, reason = set(wanted), str(exc)
    job.made["thumbs"] += len(wanted) - len(missing)
    for e in view.events:
        if e.peak_frame in missing:
            e.thumb, e.note = None, reason
    if missing:
        view.notes.append(f"no image of {len(missing)} event(s): {reason}")


def _draw_thumbnails(project: Project, source: Path, wanted: dict[int, Path], job: _Job) -> set[int]:
    """Decode the clip up to the last wanted frame and write those frames, error heatmap blended in,
    as small JPEGs. wanted: frame → file. Returns the frames it did not find."""
    import torch

    from ..heatmap import ErrorScale, overlay
    from ..revisit import revisit, scored_clip
    from ..zones import draw

    clip = scored_clip(project, source)  # checks the scores come from the current model
    scale = ErrorScale.from_calibration(clip.detector.calibration, clip.detector.config)
    left = dict(wanted)
    with closing(revisit(project, clip, job.device, job.progress, "report: images of")) as chunks:
        for chunk in chunks:
            hits = [i for i in range(len(chunk.full)) if chunk.start + i in left]
            levels = list(scale.levels(chunk.maps.err[hits])) if hits else []
            for i, level in zip(hits, levels):
                heat = overlay(torch.from_numpy(chunk.full[i]), level, scale.lut).numpy()
                _save_jpeg(left.pop(chunk.start + i), draw(heat, clip.detector.config.score.mask))
            if not left:
                break
    return set(left)


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    """(H, W, 3) uint8 → a JPEG at most THUMB_WIDTH wide, written atomically."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if image.width > THUMB_WIDTH:
        image = image.resize(
            (THUMB_WIDTH, max(1, round(image.height * THUMB_WIDTH / image.width))), Image.Resampling.LANCZOS
        )
    with fsutil.atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=THUMB_QUALITY)


def _fresh(path: Path, since: float) -> os.stat_result | None:
    """path's stat if it is a file written at or after `since` (a time), else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st if st.st_mtime >= since and path.is_file() else None


def _timeline(view: ClipView, clip: StoredClip, job: _Job) -> str:
    """The clip's timeline PNG in the report: the one scoring drew (or 'plot' redrew), else drawn anew."""
    st = _fresh(clip.timeline, clip.scored_at)
    stamp = [st.st_mtime_ns, st.st_size] if st else None
    path, rel = job.asset("timelines", view.name, [view.camera, view.name, clip.scored_at, stamp], ".png")
    if path.exists():
        return rel
    if st is not None:
        _place(clip.timeline, path)
    else:
        from .. import plot

        plot.timeline(
            path,
            clip.scores,
            view.threshold,
            clip.times,
            [(e.start_frame, e.end_frame) for e in view.events],
            title=view.name,
            duration=view.duration,
        )
    job.made["timelines"] += 1
    return rel


def _video(project: Project, view: ClipView, clip: StoredClip, job: _Job) -> str | None:
    """The clip's annotated video in the report, if one newer than its scores exists (with job.videos,
    made first for a clip with events)."""
    st = _fresh(clip.annotated, clip.scored_at)
    if st is None and job.videos and view.events:
        from ..annotate import annotate

        try:
            annotate(project, Path(clip.summary["source"]), clip.annotated, job.device, job.progress)
        except VidanomError as exc:
            view.notes.append(f"no video: {exc}")
            return None
        job.made["videos"] += 1
        st = clip.annotated.stat()
    if st is None:
        return None
    path, rel = job.asset("videos", view.name, [view.camera, view.name, st.st_mtime_ns, st.st_size], ".mp4")
    if not path.exists():
        _place(clip.annotated, path)
    return rel


def _place(src: Path, dst: Path) -> None:
    """Put src at dst: a hard link (no copy of a large video) where the file system allows, else a copy."""
    with fsutil.atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _write_static(out: Path) -> None:
    from importlib.resources import files

    for name in STATIC:
        text = files(__package__).joinpath("static", name).read_text(encoding="utf-8")
        dst = out / "assets" / name
        if not dst.is_file() or dst.read_text(encoding="utf-8") != text:
            fsutil.write_text(dst, text)


def _prune(out: Path, keep: set[Path]) -> None:
    """Remove the assets that the page no longer refers to (older thumbnails, timelines, videos)."""
    for kind in ASSET_KINDS:
        folder = out / "assets" / kind
        for path in folder.iterdir() if folder.is_dir() else []:
            if path.is_file() and path not in keep:
                path.unlink(missing_ok=True)


# -- models ------------------------------------------------------------------------------------------


def _models(stored: Stored, clips: list[ClipView]) -> list[ModelView]:
    """The model versions that scored the clips (the current one if none did), oldest first."""
    used = sorted({c.version for c in clips}) or [v for v in [stored.current] if v]
    return [_model(stored, name) for name in used]


def _model(stored: Stored, name: str) -> ModelView:
    info = stored.versions.get(name, {})
    scenes = info.get("scenes") or [info.get("scene", "?")]
    return ModelView(
        name,
        name == stored.current,
        info.get("threshold"),
        info.get("expected_false_alarms"),
        info.get("psnr"),
        [str(s) for s in scenes],
        _lineage(stored, name),
    )


def _lineage(stored: Stored, name: str | None) -> list[tuple[str, str, str]]:
    """(version, strategy, scene) from the first version to `name`, following each version's parent."""
    chain: list[tuple[str, str, str]] = []
    while name and name not in [v for v, _, _ in chain]:
        info = stored.versions.get(name, {})
        chain.append((name, str(info.get("strategy", "?")), str(info.get("scene", "?"))))
        name = info.get("parent")
    return chain[::-1]


# -- the page ----------------------------------------------------------------------------------------


def clock(seconds: float) -> str:
    """Seconds as m:ss.ss, or h:mm:ss.ss from an hour on (a frame at 25 fps lasts 0.04 s)."""
    hundredths = int(round(max(0.0, float(seconds)) * 100))
    minutes, rest = divmod(hundredths, 6000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest / 100:05.2f}" if hours else f"{minutes}:{rest / 100:05.2f}"


def span(seconds: float) -> str:
    """A length of footage in the unit that reads best: s, min or h."""
    s = float(seconds)
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def seconds(value: float) -> str:
    """A duration: 0.04 s, 12.40 s, or as a clock from a minute on."""
    return f"{float(value):.2f} s" if float(value) < 60 else clock(value)


def _render(cameras: list[CameraView]) -> str:
    """index.html of the cameras' views (Jinja2, autoescaped: clip and scene names are users' text)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader(__package__, "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(clock=clock, span=span, seconds=seconds)
    clips = [c for cam in cameras for c in cam.clips]
    rows = [(c, e) for c in clips for e in c.events]  # in camera, clip name, then time order
    return env.get_template("index.html.j2").render(
        title=cameras[0].name if len(cameras) == 1 else f"{len(cameras)} cameras",
        fleet=len(cameras) > 1,
        cameras=cameras,
        clip_views=clips,
        rows=rows,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        clips=len(clips),
        frames=sum(c.frames for c in clips),
        seconds=sum(c.duration for c in clips),
    )
