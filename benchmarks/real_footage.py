"""Does the detector hold across cameras? Trains and scores through the library, as `vidanom train` and
`vidanom score` do, on two real cameras and the bundled demo, and prints one table per variant and one
row per variant against the defaults.

    python benchmarks/real_footage.py                                     # ~15 minutes on 2 idle cores
    python benchmarks/real_footage.py --only avenue,ped1-24               # some of the experiments
    python benchmarks/real_footage.py --variant "vae.beta=0.3"            # the defaults, and a variant
    python benchmarks/real_footage.py --confirm                           # also Ped1's kept-back test clips

Experiments (data: ../shared/data, see its README):
  ped1      train on UCSD Ped1's 34 normal clips, score its labelled test clips: frame-level micro AUROC
            on raw scores, and at vidanom's own threshold the share of anomalous frames caught and of
            normal test frames flagged. While defaults are tuned, only Test001-018 count; Test019-036
            are kept back and scored only with --confirm (and then all 36 too)
  ped1-4    train on Train001-004 (80 s), score the other 30 normal clips: the share flagged (false alarms)
  ped1-24   train on Train001-024, score Train025-034: the share flagged; and made anomalies in them
  avenue    train on CUHK Avenue Train010 (a second camera, 49 s), score Train011: the share flagged;
            and made anomalies in Train011
  demo      the bundled sample videos, as the README's first command runs them: AUROC and training time
Made anomalies (vidanom.made; sizes and speeds from each camera's own footage): fast_region (one moving
region 3x fast for 3 s), stopped_region (one moving region frozen for 3 s), foreign_object (a person cut
from the other camera, moved along this camera's usual path at its walking pace for 4 s), fast (the whole
frame 4x for 6 s) and freeze (the whole frame frozen for 6 s). Per kind and camera: AUROC of the made
stretches' frames against the rest of their clips, and the share of the stretches flagged. Made clips are
encoded as H.264 (crf 18) at the source's size and rate, once, into --made (reused when present).

The summary's "mean AUROC" is over Ped1 (the tuning half) and the ten made kinds (five per camera); a
change is kept only if it raises that mean, lowers no single AUROC by more than 0.01 and raises no
false-alarm set by more than a point.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from rich.console import Console
from rich.table import Table

from vidanom import made, results, training
from vidanom.config import ProjectConfig, parse_overrides, with_overrides
from vidanom.metrics import auroc
from vidanom.project import Project

COMPONENTS = ("recon", "kl", "nll", "still", "frozen", "direction", "score")
EXPERIMENTS = ("ped1", "ped1-4", "ped1-24", "avenue", "demo")
TUNE, KEPT = range(1, 19), range(19, 37)  # Ped1's test clips used to tune, and kept back to confirm
REPO = Path(__file__).resolve().parents[1]
LOCAL_SECONDS, OBJECT_SECONDS, WHOLE_SECONDS = 3.0, 4.0, 6.0


# -- clips ---------------------------------------------------------------------------------------


def read_frames(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of a (short) clip as (n, H, W, 3) uint8, and its frame rate."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]), float(stream.average_rate)


def write_frames(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Encode frames as H.264 (crf 18) into path, atomically (once: reused when present)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "18", "preset": "fast"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    tmp.rename(path)
    return path


@dataclass(frozen=True)
class MadeSet:
    """The made clips of one camera: {kind: [(path, labels (n,) bool)]}."""

    clips: dict[str, list[tuple[Path, np.ndarray]]]


def local_anomalies(frames: np.ndarray, fps: float, donor: tuple[np.ndarray, np.ndarray], starts: list[int]) -> list:
    """fast_region, stopped_region and foreign_object, each at every start, sized from the footage."""
    scale = made.scene_scale(frames, fps)
    path = made.usual_motion(frames)
    size = scale.region(*frames.shape[1:3])
    n_local, n_obj = round(LOCAL_SECONDS * fps), round(OBJECT_SECONDS * fps)
    out = []
    for s in starts:
        out.append(made.fast_region(frames, s, n_local, made.busiest_box(frames, s, s + 3 * n_local, size)))
        out.append(made.stopped_region(frames, s, n_local, made.busiest_box(frames, s, s + n_local, size)))
        out.append(made.foreign_object(frames, donor, s, n_obj, scale, path))
    return out


def made_set(folder: Path, name: str, make: Callable[[], list[tuple[made.MadeClip, float]]]) -> MadeSet:
    """The made clips of one camera, from folder/name (made by `make` and written there first if absent)."""
    index = folder / name / "index.json"
    if not index.exists():
        (folder / name).mkdir(parents=True, exist_ok=True)
        entries = []
        for i, (clip, fps) in enumerate(make()):
            path = write_frames(folder / name / f"{i:02d}-{clip.kind}.mp4", clip.frames, fps)
            entries.append(
                {
                    "kind": clip.kind,
                    "clip": path.name,
                    "labels": np.flatnonzero(clip.labels).tolist(),
                    "frames": len(clip.frames),
                    "boxes": clip.boxes.tolist(),
                }
            )
        index.write_text(json.dumps(entries))
    out: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for e in json.loads(index.read_text()):
        y = np.zeros(e["frames"], bool)
        y[e["labels"]] = True
        out.setdefault(e["kind"], []).append((folder / name / e["clip"], y))
    return MadeSet(out)


def ped1_made(data: Path, folder: Path) -> MadeSet:
    """Made anomalies in Ped1's left-out clips Train025-034 (a person cut from Avenue as the foreign object)."""

    def make() -> list[tuple[made.MadeClip, float]]:
        clips = sorted((data / "ucsd_ped1" / "train").glob("*.mp4"))[24:]
        donor = made.cut_object(read_frames(data / "avenue" / "Train010.mp4")[0])
        out = []
        for i, path in enumerate(clips):
            frames, fps = read_frames(path)
            out += [(m, fps) for m in local_anomalies(frames, fps, donor, [round(4 * fps)])]
            out.append(
                (made.freeze(frames, (len(frames) - round(WHOLE_SECONDS * fps)) // 2, round(WHOLE_SECONDS * fps)), fps)
            )
            if i % 2 == 0:  # two clips joined, as one Ped1 clip is only 20 s: the join falls inside the stretch
                joined = np.concatenate([frames, read_frames(clips[i + 1])[0]])
                out.append((made.fast(joined, round(3 * fps), round(WHOLE_SECONDS * fps)), fps))
        return out

    return made_set(folder, "ped1", make)


def avenue_made(data: Path, folder: Path) -> MadeSet:
    """Made anomalies in Avenue's Train011, two of each local kind (a person cut from Ped1 as the foreign object)."""

    def make() -> list[tuple[made.MadeClip, float]]:
        frames, fps = read_frames(data / "avenue" / "Train011.mp4")
        donor = made.cut_object(read_frames(data / "ucsd_ped1" / "train" / "Train001.mp4")[0])
        out = [(m, fps) for m in local_anomalies(frames, fps, donor, [round(4 * fps), round(18 * fps)])]
        n = round(WHOLE_SECONDS * fps)
        out += [(made.freeze(frames, s, n), fps) for s in (round(4 * fps), round(18 * fps))]
        out.append((made.fast(frames, round(3 * fps), n), fps))
        return out

    return made_set(folder, "avenue", make)


# -- running -------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    train_seconds: float = 0.0
    psnr: float | None = None
    threshold: float = 0.0
    expected_fa: float | None = None
    score_fps: float = 0.0
    rows: dict[str, dict[str, float | None]] = field(default_factory=dict)  # metric -> component -> value


def linked(folder: Path, files: list[Path]) -> Path:
    """A folder of symlinks to some clips (the data is never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    return folder


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = {c: np.array([float(r[c]) if r.get(c) not in (None, "") else np.nan for r in rows]) for c in COMPONENTS}
    out["anomalous"] = np.array([int(r["anomalous"]) for r in rows])
    return out


def train(root: Path, cfg: ProjectConfig, videos: list[Path], result: Result) -> Project:
    """A project at root trained on videos (reused as it is when root already holds a trained one)."""
    if (root / "models" / "current").exists():
        project = Project.open(root)
    else:
        shutil.rmtree(root, ignore_errors=True)  # an interrupted run's project starts over: its time is the whole
        project = Project.init(root, cfg)
        t0 = time.time()
        training.train(project, videos)
        (root / "train_seconds").write_text(f"{time.time() - t0:.1f}")
    result.train_seconds = float((root / "train_seconds").read_text())
    info = json.loads((project.require_version() / "version.json").read_text())
    result.threshold, result.psnr = info["threshold"], info.get("psnr")
    result.expected_fa = info.get("expected_false_alarms")
    return project


def score(project: Project, videos: list[Path], result: Result) -> dict[str, dict[str, np.ndarray]]:
    t0, frames, out = time.time(), 0, {}
    for v in videos:
        for r in results.score(project, v):
            out[r.name] = read_csv(r.csv)
            frames += r.frames
    result.score_fps = frames / (time.time() - t0)
    return out


def component_auroc(y: np.ndarray, values: np.ndarray) -> float | None:
    ok = ~np.isnan(values)
    if ok.sum() == 0 or len(np.unique(y[ok])) < 2:
        return None
    v = np.where(ok, values, np.nanmin(values))  # no value (the LSTM-MDN's warm-up): the least anomalous
    return auroc(y, v)


def add_rows(result: Result, name: str, y: np.ndarray, scored: list[dict[str, np.ndarray]]) -> None:
    """AUROC per component, and the share flagged among positive (and negative) frames."""
    result.rows[f"{name} AUROC"] = {c: component_auroc(y, np.concatenate([s[c] for s in scored])) for c in COMPONENTS}
    flags = np.concatenate([s["anomalous"] for s in scored])
    if y.any():
        result.rows[f"{name} flagged"] = {"score": float(flags[y == 1].mean())}
    if (y == 0).any() and not y.all():
        result.rows[f"{name} normal flagged"] = {"score": float(flags[y == 0].mean())}


def add_false_alarms(result: Result, name: str, scored: dict[str, dict[str, np.ndarray]]) -> None:
    flags = np.concatenate([s["anomalous"] for s in scored.values()])
    result.rows[f"{name} flagged"] = {"score": float(flags.mean())}


def add_made(result: Result, project: Project, made_clips: MadeSet, camera: str) -> None:
    for kind in made.KINDS:
        clips = made_clips.clips.get(kind, [])
        scored = [score(project, [path], Result(""))[path.name] for path, _ in clips]
        add_rows(result, f"{camera} {kind}", np.concatenate([y for _, y in clips]), scored)


def run_ped1(args: argparse.Namespace, work: Path, cfg: ProjectConfig) -> Result:
    result = Result("ped1")
    project = train(work / "ped1", cfg, [args.data / "ucsd_ped1" / "train"], result)
    test = args.data / "ucsd_ped1" / "test"
    labels = results.read_labels(args.data / "ucsd_ped1" / "labels.json")
    parts = {
        "Ped1 test 001-018": TUNE,
        **({"Ped1 test 019-036": KEPT, "Ped1 test all": range(1, 37)} if args.confirm else {}),
    }
    wanted = sorted({f"Test{i:03d}.mp4" for r in parts.values() for i in r})
    scored = score(project, [test / n for n in wanted], result)
    for name, numbers in parts.items():
        names = [f"Test{i:03d}.mp4" for i in numbers]
        y = np.concatenate([results.label_vector(labels[n], len(scored[n]["score"]), n) for n in names])
        add_rows(result, name, y, [scored[n] for n in names])
    return result


def run_ped1_subset(args: argparse.Namespace, work: Path, cfg: ProjectConfig, n_train: int) -> Result:
    result = Result(f"ped1-{n_train}")
    clips = sorted((args.data / "ucsd_ped1" / "train").glob("*.mp4"))
    train_dir = linked(work / f"ped1-{n_train}-train", clips[:n_train])
    rest = linked(work / f"ped1-{n_train}-rest", clips[n_train:])
    project = train(work / f"ped1-{n_train}", cfg, [train_dir], result)
    add_false_alarms(result, f"Ped1 {n_train} -> {len(clips) - n_train} normal", score(project, [rest], result))
    if n_train == 24:
        add_made(result, project, ped1_made(args.data, args.made), "Ped1")
    return result


def run_avenue(args: argparse.Namespace, work: Path, cfg: ProjectConfig) -> Result:
    result = Result("avenue")
    avenue = args.data / "avenue"
    project = train(work / "avenue", cfg, [avenue / "Train010.mp4"], result)
    add_false_alarms(result, "Avenue 010 -> 011", score(project, [avenue / "Train011.mp4"], result))
    add_made(result, project, avenue_made(args.data, args.made), "Avenue")
    return result


def run_demo(args: argparse.Namespace, work: Path, cfg: ProjectConfig) -> Result:
    result = Result("demo")
    samples = REPO / "sample_videos"
    project = train(work / "demo", cfg, [samples / "train"], result)
    scored = score(project, [samples / "test"], result)
    labels = results.read_labels(samples / "labels.json")
    names = sorted(labels)
    y = np.concatenate([results.label_vector(labels[n], len(scored[n]["score"]), n) for n in names])
    add_rows(result, "demo", y, [scored[n] for n in names])
    return result


def table(runs: list[Result], title: str) -> Table:
    t = Table(title=title)
    t.add_column("")
    for c in COMPONENTS:
        t.add_column("combined" if c == "score" else c, justify="right")
    for r in runs:
        for metric, values in r.rows.items():
            pct = "flagged" in metric
            t.add_row(
                metric,
                *(
                    "" if values.get(c) is None else f"{100 * values[c]:.1f}%" if pct else f"{values[c]:.3f}"
                    for c in COMPONENTS
                ),
            )
    for r in runs:
        fa = "" if r.expected_fa is None else f", expected false alarms {100 * r.expected_fa:.1f}%"
        psnr = "" if r.psnr is None else f", PSNR {r.psnr:.1f} dB"
        t.add_row(
            f"{r.name}: train {r.train_seconds:.0f} s, score {r.score_fps:.0f} frames/s{psnr}, "
            f"threshold {r.threshold:.2f}{fa}"
        )
    return t


def run_all(args: argparse.Namespace, work: Path, overrides: list[str]) -> list[Result]:
    cfg = with_overrides(ProjectConfig(), **parse_overrides(overrides))
    work.mkdir(parents=True, exist_ok=True)
    runs = {
        "ped1": lambda: run_ped1(args, work, cfg),
        "ped1-4": lambda: run_ped1_subset(args, work, cfg, 4),
        "ped1-24": lambda: run_ped1_subset(args, work, cfg, 24),
        "avenue": lambda: run_avenue(args, work, cfg),
        "demo": lambda: run_demo(args, work, cfg),
    }
    return [runs[name]() for name in EXPERIMENTS if name in args.only.split(",")]


# -- the summary: one row per variant -------------------------------------------------------------


def figures(runs: list[Result]) -> dict[str, float]:
    """The combined score's figures of one variant: {metric: value}."""
    return {m: v["score"] for r in runs for m, v in r.rows.items() if v.get("score") is not None}


def mean_auroc(found: dict[str, float]) -> float | None:
    """Over Ped1's tuning half and the made kinds of both cameras (those that ran)."""
    keys = [k for k in found if k.endswith("AUROC") and not k.startswith(("demo", "Ped1 test 019", "Ped1 test all"))]
    return float(np.mean([found[k] for k in keys])) if keys else None


def summary(rows: dict[str, list[Result]]) -> Table:
    """One row per variant: the mean AUROC, the false-alarm sets, and every AUROC and flagged share."""
    found = {name: figures(runs) for name, runs in rows.items()}
    metrics = list(dict.fromkeys(m for f in found.values() for m in f))
    t = Table(title="the combined score, per variant")
    t.add_column("")
    for name in found:
        t.add_column(name, justify="right")
    means = {name: mean_auroc(f) for name, f in found.items()}
    t.add_row("mean AUROC", *("" if v is None else f"{v:.3f}" for v in means.values()))
    for m in metrics:
        pct = "flagged" in m
        t.add_row(m, *("" if m not in f else f"{100 * f[m]:.1f}%" if pct else f"{f[m]:.3f}" for f in found.values()))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data")
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    ap.add_argument("--set", action="append", default=[], help="config override of every run, e.g. vae.beta=0.3")
    ap.add_argument("--variant", action="append", default=[], help="also run with these overrides (';'-separated)")
    ap.add_argument("--confirm", action="store_true", help="also score Ped1's kept-back test clips Test019-036")
    ap.add_argument("--work", type=Path, help="folder for the projects (reused when present; default: temporary)")
    ap.add_argument("--made", type=Path, help="folder of the made clips (default: WORK/made)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if unknown := set(args.only.split(",")) - set(EXPERIMENTS):
        ap.error(f"unknown experiment(s): {', '.join(sorted(unknown))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="vidanom-real-"))
    args.made = args.made or work / "made"
    rows: dict[str, list[Result]] = {}
    for variant in ["", *args.variant]:
        t0 = time.time()
        sets = args.set + [s for s in variant.split(";") if s]
        key = hashlib.sha1(json.dumps(sorted(sets)).encode()).hexdigest()[:8]  # the projects of these settings
        rows[variant or "defaults"] = runs = run_all(args, work / f"config-{key}", sets)
        title = f"vidanom on real footage {' '.join(sets)} ({time.time() - t0:.0f} s, {os.cpu_count()} cores)"
        Console().print(table(runs, title))
    Console().print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps({k: [r.__dict__ for r in v] for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
