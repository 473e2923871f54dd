"""Alarms a person corrects: how far `vidanom accept` removes false alarms, what it keeps catching, what it
costs, and what a zone to ignore does. Everything through the library, with the defaults, on real footage
(../shared/data, see its README):

    python benchmarks/accept.py                        # both cameras: hours on 2 shared cores (training)
    python benchmarks/accept.py --only avenue --work /tmp/acc
    python benchmarks/accept.py --only avenue --work /tmp/acc --parts zone   # only the zone (see below)

Per camera: train on a short normal recording, short enough that new normal footage of the same camera
raises false events; score new normal footage, cut in two parts; accept every false event of the first
part in one update; score the second part again. Made anomalies (vidanom.made: the whole frame 4x fast,
and frozen, cut into the second part's footage), and Ped1's labelled test clips, are scored before and
after: AUROC of the made (or labelled) frames against the rest of their clips, and the share of them
flagged.
  avenue  train on the first 20 s of Avenue Train010; first part: the rest of Train010 (29 s); second
          part: Train011 (31 s)
  ped1    train on Ped1 Train001-002 (40 s); first part: Train003-018; second part: Train019-034
Then the time an accept of one 10-s stretch takes, against a full retrain on the same footage (the
training footage and the stretch), and a zone: a made anomaly (one region 3x fast) scored with a zone
over it and with the same zone moved beside it (the zone set after training, the threshold recalibrated
by `train --stage calibrate`, as the README says to do).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from real_footage import read_frames, write_frames  # beside this script

from vidanom import accepting, made, results, training, zones
from vidanom.metrics import auroc
from vidanom.project import Project
from vidanom.store import ScoreStore

REPO = Path(__file__).resolve().parents[1]
WHOLE_SECONDS = 6.0  # the made fast and frozen stretches
STRETCH_SECONDS = 10.0  # the stretch accepted to time one accept


def linked(folder: Path, files: list[Path]) -> list[Path]:
    """Symlinks to some clips in a folder of their own (the data is never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    return [folder / f.name for f in files]


@dataclass
class Camera:
    """One camera's footage for the benchmark."""

    name: str
    train: list[Path]  # the short normal recording
    first: list[Path]  # new normal footage whose false events are accepted
    second: list[Path]  # new normal footage scored before and after
    made: list[tuple[Path, np.ndarray]] = field(default_factory=list)  # (clip, labels) made in the second part
    labelled: list[tuple[Path, np.ndarray]] = field(default_factory=list)  # real anomalies with labels


def made_clips(folder: Path, clips: list[Path]) -> list[tuple[Path, np.ndarray]]:
    """A 4x fast and a frozen stretch of WHOLE_SECONDS in the middle of each clip (written once)."""
    out = []
    for path in clips:
        frames, fps = read_frames(path)
        n = round(WHOLE_SECONDS * fps)
        start = (len(frames) - 4 * n) // 2 if len(frames) > 4 * n else None
        kinds = [made.freeze(frames, (len(frames) - n) // 2, n)]
        if start is not None:
            kinds.append(made.fast(frames, start, n))
        for m in kinds:
            out.append((write_frames(folder / f"{path.stem}-{m.kind}.mp4", m.frames, fps), m.labels))
    return out


def avenue(data: Path, work: Path) -> Camera:
    frames, fps = read_frames(data / "avenue" / "Train010.mp4")
    cut = round(20 * fps)
    clips = work / "clips" / "avenue"
    train = write_frames(clips / "train" / "Train010-first20s.mp4", frames[:cut], fps)
    first = write_frames(clips / "first" / "Train010-rest.mp4", frames[cut:], fps)
    second = linked(clips / "second", [data / "avenue" / "Train011.mp4"])
    return Camera("avenue", [train], [first], second, made_clips(clips / "made", second))


def ped1(data: Path, work: Path) -> Camera:
    train = sorted((data / "ucsd_ped1" / "train").glob("*.mp4"))
    clips = work / "clips" / "ped1"
    labels = results.read_labels(data / "ucsd_ped1" / "labels.json")
    test = sorted((data / "ucsd_ped1" / "test").glob("*.mp4"))
    labelled = [(p, results.label_vector(labels[p.name], 200, p.name) > 0) for p in test]
    second = linked(clips / "second", train[18:])
    return Camera(
        "ped1",
        linked(clips / "train", train[:2]),
        linked(clips / "first", train[2:18]),
        second,
        made_clips(clips / "made", second[::4]),
        labelled,
    )


# -- measuring ----------------------------------------------------------------------------------------


@dataclass
class Scored:
    events: int = 0
    frames: int = 0
    flagged: int = 0


def score_normal(project: Project, clips: list[Path]) -> Scored:
    out = Scored()
    for path in clips:
        for r in results.score(project, path):
            out.events += len(r.segments)
            stored = ScoreStore.of(project).read(r.key)
            out.frames += len(stored.flags)
            out.flagged += int(stored.flags.sum())
    return out


def score_labelled(project: Project, clips: list[tuple[Path, np.ndarray]]) -> tuple[float | None, float | None]:
    """AUROC of the labelled frames against the rest of their clips, and the share of them flagged."""
    if not clips:
        return None, None
    ys, scores, flags = [], [], []
    for path, y in clips:
        (r,) = results.score(project, path)
        stored = ScoreStore.of(project).read(r.key)
        ys.append(y[: len(stored.scores)])
        scores.append(stored.scores)
        flags.append(stored.flags)
    y, s, f = np.concatenate(ys), np.concatenate(scores), np.concatenate(flags)
    return auroc(y, s), float(f[y].mean())


def trained(root: Path, videos: list[Path]) -> tuple[Project, float]:
    """A project trained on videos with the defaults (reused when root already holds one), and its training time."""
    if not (root / "models" / "current").exists():
        shutil.rmtree(root, ignore_errors=True)
        project = Project.init(root)
        t0 = time.time()
        training.train(project, videos)
        (root / "train_seconds").write_text(f"{time.time() - t0:.1f}")
    return Project.open(root), float((root / "train_seconds").read_text())


def copied(src: Path, dst: Path) -> Project:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return Project.open(dst)


@dataclass
class Row:
    camera: str
    parts: tuple[str, ...] = ()  # what was measured (PARTS)
    train_seconds: float = 0.0
    accepted_events: int = 0
    accepted_seconds: float = 0.0
    accept_seconds: float = 0.0
    accept_steps: int = 0
    before: Scored = field(default_factory=Scored)
    after: Scored = field(default_factory=Scored)
    first: Scored = field(default_factory=Scored)
    first_after: Scored = field(default_factory=Scored)
    made_before: tuple[float | None, float | None] = (None, None)
    made_after: tuple[float | None, float | None] = (None, None)
    labelled_before: tuple[float | None, float | None] = (None, None)
    labelled_after: tuple[float | None, float | None] = (None, None)
    stretch_seconds: float = 0.0  # one accept of a STRETCH_SECONDS stretch
    retrain_seconds: float | None = None  # a full retrain on the training footage and that stretch (if run)
    zone_inside: float | None = None  # share of the made stretch flagged with a zone over it
    zone_beside: float | None = None  # ... with the same zone beside it


PARTS = ("accept", "stretch", "retrain", "zone")


def run(camera: Camera, work: Path, *, parts: tuple[str, ...] = PARTS) -> Row:
    row = Row(camera.name, parts)
    base, row.train_seconds = trained(work / camera.name / "base", camera.train)
    if "accept" in parts:
        false_events(row, base, camera, work)
    if "stretch" in parts:
        time_one_stretch(row, base, camera, work, retrain="retrain" in parts)
    if "zone" in parts:
        zone(row, base, camera, work)
    return row


def false_events(row: Row, base: Project, camera: Camera, work: Path) -> None:
    """Accept every false event of the first part in one update; score everything before and after."""
    project = copied(base.root, work / camera.name / "accepted")
    row.first = score_normal(project, camera.first)
    row.before = score_normal(project, camera.second)
    row.made_before = score_labelled(project, camera.made)
    row.labelled_before = score_labelled(project, camera.labelled)
    store = ScoreStore.of(project)
    stretches = []
    for path in camera.first:
        segments = store.read(store.lookup(path)).summary["segments"]
        if segments:
            stretches += accepting.stretches(project, path, events=range(1, len(segments) + 1))
    row.accepted_events = len(stretches)
    row.accepted_seconds = sum(s.end - s.start for s in stretches)
    if stretches:
        t0 = time.time()
        result = accepting.learn(project, stretches)
        row.accept_seconds, row.accept_steps = time.time() - t0, result.steps
    row.after = score_normal(project, camera.second)
    row.first_after = score_normal(project, camera.first)
    row.made_after = score_labelled(project, camera.made)
    row.labelled_after = score_labelled(project, camera.labelled)


def time_one_stretch(row: Row, base: Project, camera: Camera, work: Path, *, retrain: bool) -> None:
    """One accept of a STRETCH_SECONDS stretch of the first part, against a full retrain on the same
    footage (unless retrain is False)."""
    project = copied(base.root, work / camera.name / "stretch")
    (r,) = results.score(project, camera.first[0])
    t0 = time.time()
    accepting.accept(project, r.key, start=0.0, end=min(STRETCH_SECONDS, float(r.frames) / r.fps))
    row.stretch_seconds = time.time() - t0
    if not retrain:
        return
    t0 = time.time()
    training.train(project)  # every cached clip of the scene: the training footage and the accepted stretch
    row.retrain_seconds = time.time() - t0


def zone(row: Row, base: Project, camera: Camera, work: Path) -> None:
    """A region 3x fast in the second part, scored with a zone over it and with the zone beside it."""
    frames, fps = read_frames(camera.second[0])
    scale = made.scene_scale(frames, fps)
    height, width = frames.shape[1:3]
    size = scale.region(height, width)
    n = round(3 * fps)
    start = round(4 * fps)
    box = made.busiest_box(frames, start, start + 3 * n, size)
    m = made.fast_region(frames, start, n, box)
    folder = work / "clips" / camera.name / "zone"
    path = write_frames(folder / f"{camera.second[0].stem}-fast_region.mp4", m.frames, fps)
    top, left, bottom, right = box
    pad = max(4, size[0] // 4)  # a zone drawn a little larger than what it covers, as a person draws one
    shift = width // 2 if right + width // 2 <= width else -min(left, width // 2)  # beside it: half a frame away
    for name, dx in (("inside", 0), ("beside", shift)):
        project = copied(base.root, work / camera.name / f"zone-{name}")
        polygon = [
            (max(0, left + dx - pad), max(0, top - pad)),
            (min(width, right + dx + pad), max(0, top - pad)),
            (min(width, right + dx + pad), min(height, bottom + pad)),
            (max(0, left + dx - pad), min(height, bottom + pad)),
        ]
        zones.add_zone(project, polygon, (width, height))
        training.train(project, stage="calibrate")
        (r,) = results.score(project, path)
        flags = ScoreStore.of(project).read(r.key).flags
        share = float(flags[m.labels].mean())
        if name == "inside":
            row.zone_inside = share
        else:
            row.zone_beside = share


# -- the table --------------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def num(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def events(s: Scored) -> str:
    return f"{s.events} ({pct(s.flagged / max(1, s.frames))})"


def change(pair: tuple[float | None, float | None], after: tuple[float | None, float | None], i: int) -> str:
    show = num if i == 0 else pct
    return f"{show(pair[i])} -> {show(after[i])}"


def table(rows: list[Row]) -> Table:
    t = Table(title="vidanom accept on real footage (the defaults)")
    t.add_column("")
    for r in rows:
        t.add_column(r.camera, justify="right")
    accept, stretch, zoned = "accept", "stretch", "zone"
    lines = {
        "first part: false events (flagged frames)": (accept, lambda r: events(r.first)),
        "accepted: events, seconds": (accept, lambda r: f"{r.accepted_events}, {r.accepted_seconds:.1f} s"),
        "accept: time (steps)": (accept, lambda r: f"{r.accept_seconds:.0f} s ({r.accept_steps})"),
        "first part after: false events (flagged)": (accept, lambda r: events(r.first_after)),
        "second part before: false events (flagged)": (accept, lambda r: events(r.before)),
        "second part after: false events (flagged)": (accept, lambda r: events(r.after)),
        "made fast/frozen: AUROC before -> after": (accept, lambda r: change(r.made_before, r.made_after, 0)),
        "made fast/frozen: flagged before -> after": (accept, lambda r: change(r.made_before, r.made_after, 1)),
        "labelled test clips: AUROC before -> after": (
            accept,
            lambda r: change(r.labelled_before, r.labelled_after, 0),
        ),
        "labelled test clips: flagged before -> after": (
            accept,
            lambda r: change(r.labelled_before, r.labelled_after, 1),
        ),
        f"accept of one {STRETCH_SECONDS:g}-s stretch": (stretch, lambda r: f"{r.stretch_seconds:.0f} s"),
        "full retrain on the same footage": ("retrain", lambda r: f"{r.retrain_seconds or 0:.0f} s"),
        "first training": ("", lambda r: f"{r.train_seconds:.0f} s"),
        "region 3x fast: flagged, zone over it / beside it": (
            zoned,
            lambda r: f"{pct(r.zone_inside)} / {pct(r.zone_beside)}",
        ),
    }
    for name, (part, value) in lines.items():
        t.add_row(name, *(value(r) if not part or part in r.parts else "not run" for r in rows))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data")
    ap.add_argument("--only", default="avenue,ped1", help="comma-separated, of avenue, ped1")
    ap.add_argument("--work", type=Path, help="folder for clips and projects (trained ones are reused)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vidanom-accept-"))
    cameras = {"avenue": avenue, "ped1": ped1}
    rows = []
    for name in args.only.split(","):
        rows.append(run(cameras[name](args.data, work), work, parts=tuple(args.parts.split(","))))
        Console().print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], default=lambda o: o.__dict__, indent=2))


if __name__ == "__main__":
    main()
