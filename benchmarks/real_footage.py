"""Does the detector hold on real cameras? Trains and scores through the library, as `vidanom train` and
`vidanom score` do, and prints one table: per score component and combined.

    python benchmarks/real_footage.py                                  # ~15 minutes on 2 cores
    python benchmarks/real_footage.py --only avenue,ped1-24            # some of the experiments
    python benchmarks/real_footage.py --set vae.beta=0.1 --json out.json   # a variant
    python benchmarks/real_footage.py --only ped1,avenue --ablate          # and every ablation (~1 hour)

Experiments (data: ../shared/data, see its README):
  ped1      train on UCSD Ped1's 34 normal clips, score its 36 labelled test clips: frame-level micro
            AUROC on raw scores, and at vidanom's own threshold the share of anomalous frames caught and
            of normal test frames flagged
  ped1-4    train on Train001-004 (80 s), score the other 30 normal clips: the share flagged (all false alarms)
  ped1-24   train on Train001-024, score Train025-034: the share flagged; and made anomalies in those
            left-out clips: 6 s played 4x fast (every 4th frame; two clips joined inside the stretch, as
            one Ped1 clip is only 20 s) and 6 s frozen on its first frame
  avenue    train on CUHK Avenue Train010, score Train011: the share flagged; and the same two made
            anomalies in Train011
For a made anomaly: AUROC of the stretch's frames against the rest of its clip, and the share of the
stretch flagged. Made clips are re-encoded as H.264 (crf 18) at the source's frame rate.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from rich.console import Console
from rich.table import Table

from vidanom import results, training
from vidanom.config import ProjectConfig, parse_overrides, with_overrides
from vidanom.metrics import auroc
from vidanom.project import Project

COMPONENTS = ("recon", "kl", "nll", "still", "score")
STRETCH_SECONDS = 6.0
FAST = 4
EXPERIMENTS = ("ped1", "ped1-4", "ped1-24", "avenue")


# -- made anomalies ------------------------------------------------------------------------------


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of a clip as RGB arrays, and its frame rate (the clips here are short)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in c.decode(stream)], float(stream.average_rate)


def write_frames(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "18", "preset": "fast"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    return path


def made_anomalies(first: Path, second: Path | None, out: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """{kind: (clip, (start, end))} for 'fast' and 'freeze' made from normal footage.

    fast: a normal lead-in, then STRETCH_SECONDS of every FAST-th frame, then normal footage again
    (when `second` is given, the footage of `first` and `second` joined, the join inside the stretch).
    freeze: the clip `first` with STRETCH_SECONDS from its middle frozen on the stretch's first frame.
    """
    a, fps = read_frames(first)
    n = int(round(STRETCH_SECONDS * fps))
    footage = a + (read_frames(second)[0] if second is not None else [])
    lead = min(len(a) // 3, int(3 * fps))
    tail = footage[lead + n * FAST :]
    fast = footage[:lead] + footage[lead : lead + n * FAST : FAST] + tail
    start = (len(a) - n) // 2
    freeze = a[:start] + [a[start]] * n + a[start + n :]
    stem = first.stem
    return {
        "fast": (write_frames(out / f"{stem}-fast.mp4", fast, fps), (lead, lead + n)),
        "freeze": (write_frames(out / f"{stem}-freeze.mp4", freeze, fps), (start, start + n)),
    }


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
        (folder / f.name).symlink_to(f.resolve())
    return folder


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = {c: np.array([float(r[c]) if r.get(c) not in (None, "") else np.nan for r in rows]) for c in COMPONENTS}
    out["anomalous"] = np.array([int(r["anomalous"]) for r in rows])
    return out


def train(root: Path, cfg: ProjectConfig, videos: list[Path], result: Result) -> Project:
    project = Project.init(root, cfg)
    t0 = time.time()
    r = training.train(project, videos)
    result.train_seconds = time.time() - t0
    result.threshold = r.threshold
    info = json.loads((project.require_version() / "version.json").read_text())
    result.psnr = info.get("psnr")
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


def add_made(result: Result, project: Project, made: list[dict[str, tuple[Path, tuple[int, int]]]], label: str) -> None:
    for kind in ("fast", "freeze"):
        ys, scored = [], []
        for m in (m for m in made if kind in m):
            path, (a, b) = m[kind]
            s = score(project, [path], Result(""))[path.name]
            y = np.zeros(len(s["score"]), np.int8)
            y[a:b] = 1
            ys.append(y)
            scored.append(s)
        add_rows(result, f"{label} {kind}", np.concatenate(ys), scored)


def run_ped1(data: Path, work: Path, cfg: ProjectConfig) -> Result:
    result = Result("ped1")
    project = train(work / "ped1", cfg, [data / "ucsd_ped1" / "train"], result)
    scored = score(project, [data / "ucsd_ped1" / "test"], result)
    labels = results.read_labels(data / "ucsd_ped1" / "labels.json")
    names = sorted(labels)
    y = np.concatenate([results.label_vector(labels[n], len(scored[n]["score"]), n) for n in names])
    add_rows(result, "Ped1 test", y, [scored[n] for n in names])
    return result


def run_ped1_subset(data: Path, work: Path, cfg: ProjectConfig, n_train: int) -> Result:
    result = Result(f"ped1-{n_train}")
    clips = sorted((data / "ucsd_ped1" / "train").glob("*.mp4"))
    train_dir = linked(work / f"ped1-{n_train}-train", clips[:n_train])
    rest = linked(work / f"ped1-{n_train}-rest", clips[n_train:])
    project = train(work / f"ped1-{n_train}", cfg, [train_dir], result)
    add_false_alarms(result, f"Ped1 {n_train} -> {len(clips) - n_train} normal", score(project, [rest], result))
    if n_train == 24:
        made_dir = work / "ped1-made"
        made_dir.mkdir()
        left = clips[n_train:]
        made = [made_anomalies(left[i], left[i + 1], made_dir) for i in range(0, len(left) - 1, 2)]
        made += [{"freeze": made_anomalies(c, None, made_dir)["freeze"]} for c in left[1::2]]
        add_made(result, project, made, "Ped1")
    return result


def run_avenue(data: Path, work: Path, cfg: ProjectConfig) -> Result:
    result = Result("avenue")
    avenue = data / "avenue"
    project = train(work / "avenue", cfg, [avenue / "Train010.mp4"], result)
    add_false_alarms(result, "Avenue 010 -> 011", score(project, [avenue / "Train011.mp4"], result))
    made_dir = work / "avenue-made"
    made_dir.mkdir()
    add_made(result, project, [made_anomalies(avenue / "Train011.mp4", None, made_dir)], "Avenue")
    return result


def table(results: list[Result], title: str) -> Table:
    t = Table(title=title)
    t.add_column("")
    for c in COMPONENTS:
        t.add_column("combined" if c == "score" else c, justify="right")
    for r in results:
        for metric, values in r.rows.items():
            pct = "flagged" in metric
            t.add_row(
                metric,
                *(
                    "" if values.get(c) is None else f"{100 * values[c]:.1f}%" if pct else f"{values[c]:.3f}"
                    for c in COMPONENTS
                ),
            )
    for r in results:
        fa = "" if r.expected_fa is None else f", expected false alarms {100 * r.expected_fa:.1f}%"
        psnr = "" if r.psnr is None else f", PSNR {r.psnr:.1f} dB"
        t.add_row(
            f"{r.name}: train {r.train_seconds:.0f} s, score {r.score_fps:.0f} frames/s{psnr}, "
            f"threshold {r.threshold:.2f}{fa}"
        )
    return t


# the modelling choices the README's ablation table measures, each against the defaults
ABLATIONS = {
    "signed difference as motion plane": [
        "frames.motion='difference'",
        "frames.motion_gain=1.0",
        "frames.motion_blur=1",
    ],
    "64x64 frames (squashed)": ["frames.width=64"],
    "no place statistics shrinkage": ["score.shrink_seconds=0.0"],
    "LSTM-MDN reads latents only": ["mdn.delta=False", "mdn.residual=False"],
    "LSTM-MDN: surprise only, no stillness": ["score.weights=(1.0,1.0,0.25,0.0)"],
    "no LSTM-MDN in the score": ["score.weights=(1.0,1.0,0.0,0.0)"],
    "no pixel coordinates": ["vae.coords=False"],
}
SUMMARY = (
    "Ped1 test AUROC",
    "Ped1 test flagged",
    "Ped1 test normal flagged",
    "Avenue 010 -> 011 flagged",
    "Avenue fast AUROC",
    "Avenue fast flagged",
    "Avenue freeze AUROC",
    "Avenue freeze flagged",
)


def run_all(args: argparse.Namespace, work: Path, overrides: list[str]) -> list[Result]:
    cfg = with_overrides(ProjectConfig(), **parse_overrides(overrides))
    work.mkdir(parents=True, exist_ok=True)
    runs = {
        "ped1": lambda: run_ped1(args.data, work, cfg),
        "ped1-4": lambda: run_ped1_subset(args.data, work, cfg, 4),
        "ped1-24": lambda: run_ped1_subset(args.data, work, cfg, 24),
        "avenue": lambda: run_avenue(args.data, work, cfg),
    }
    return [runs[name]() for name in EXPERIMENTS if name in args.only.split(",")]


def summary(rows: dict[str, list[Result]]) -> Table:
    """One row per variant: the combined score's key figures."""
    t = Table(title="ablations: the combined score, each change against the defaults")
    t.add_column("")
    for metric in SUMMARY:
        t.add_column(metric.replace("Ped1 test ", "Ped1 ").replace(" flagged", " flag."), justify="right")
    for name, runs in rows.items():
        found = {m: v.get("score") for r in runs for m, v in r.rows.items()}
        t.add_row(
            name,
            *(
                "" if found.get(m) is None else f"{100 * found[m]:.1f}%" if "flagged" in m else f"{found[m]:.3f}"
                for m in SUMMARY
            ),
        )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. vae.beta=0.3")
    ap.add_argument(
        "--ablate",
        action="store_true",
        help="also run every ablation (the experiments in --only, about 8 minutes each for ped1,avenue)",
    )
    ap.add_argument("--work", type=Path, help="folder for the projects (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if unknown := set(args.only.split(",")) - set(EXPERIMENTS):
        ap.error(f"unknown experiment(s): {', '.join(sorted(unknown))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="vidanom-real-"))
    t0 = time.time()
    rows = {"defaults": run_all(args, work / "defaults", args.set)}
    Console().print(
        table(
            rows["defaults"],
            f"vidanom on real footage {' '.join(args.set)} ({time.time() - t0:.0f} s, {os.cpu_count()} cores)",
        )
    )
    for i, (name, overrides) in enumerate(ABLATIONS.items() if args.ablate else []):
        rows[name] = run_all(args, work / f"ablation{i}", args.set + overrides)
        Console().print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps({k: [r.__dict__ for r in v] for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
