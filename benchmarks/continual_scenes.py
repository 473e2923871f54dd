"""Continual learning on video: scene A is UCSD Ped1, scene B a visibly different synthetic scene (the
sample-video generator's night plaza, with its own anomalies). Train on A, then `update` with B, and
report each scene's micro AUROC, the share of A's normal test frames flagged, and made freezes and 4x
fast stretches in A's left-out clips, before and after, per strategy and per way of calibrating A:

    replay          generative replay of the VAE and dreamed clips for the LSTM-MDN (the default), A's
                    calibration carried (the default)
    kept, bound     the same models, A calibrated anew on the frames the base model kept of it (as
                    `update` does with --keep-frames, which changes nothing of the fitting), or on all of
                    A's footage (what no update reads: the bound)
    ewc, finetune   the baselines
    joint           one model trained on A and B together, as one scene
    alone           B trained alone (what the update should reach on B)
    accepts         ten accepts into A in a row (vidanom accept), each of one new 20-s clip of normal Ped1 footage
                    (as accepting footage into the current scene does): A's AUROC after each

    python benchmarks/continual_scenes.py --data ../shared/data/ucsd_ped1 [--work DIR] [--only ...]

A is trained on Train001-024; the made anomalies are in Train025-034, which the accepts learn. Everything
goes through the library calls behind `vidanom train`, `update` and `score`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_videos"))  # the scenes of the sample videos
sys.path.insert(0, str(Path(__file__).resolve().parent))  # real_footage's made anomalies
import real_footage  # noqa: E402
import scenes as synth  # noqa: E402
from rich.console import Console
from rich.table import Table

from vidanom import accepting, kept, results, training
from vidanom.config import ProjectConfig, with_overrides
from vidanom.detector import Detector
from vidanom.metrics import auroc
from vidanom.project import Project

B_TRAIN, B_TEST = 6, 4  # synthetic clips of scene B
B_FRAMES = 200
B_ANOMALIES = [("fast", 60, 110), ("wrong_way", 40, 120), ("intruder", 80, 150), ("fast", 120, 170)]
A_TRAIN = 24  # Ped1 clips scene A is trained on; the rest are left out (made anomalies, accepts)
EXPERIMENTS = ("replay", "kept", "bound", "ewc", "finetune", "joint", "alone", "accepts")
KEEP_FRAMES = 2000  # frames kept of each scene where the project keeps them (--keep-frames)


def make_scene_b(root: Path) -> tuple[Path, Path, dict[str, list[list[int]]]]:
    """Scene B's training and test clips and the test clips' labels (made once per work folder)."""
    train, test, made = root / "b_train", root / "b_test", root / "b_labels.json"
    if made.exists():
        return train, test, json.loads(made.read_text())
    shutil.rmtree(train, ignore_errors=True)
    shutil.rmtree(test, ignore_errors=True)
    train.mkdir(parents=True)
    test.mkdir()
    for i in range(B_TRAIN):
        synth.write_clip(train / f"b_train_{i:02d}.mp4", synth.SCENE_B, B_FRAMES, [], seed=500 + i)
    labels = {}
    for i, (kind, a, b) in enumerate(B_ANOMALIES[:B_TEST]):
        ranges = synth.write_clip(test / f"b_test_{i:02d}.mp4", synth.SCENE_B, B_FRAMES, [(kind, a, b)], seed=600 + i)
        labels[f"b_test_{i:02d}.mp4"] = [list(r) for r in ranges]
    made.write_text(json.dumps(labels))
    return train, test, labels


def scored(project: Project, clip: Path) -> tuple[np.ndarray, np.ndarray]:
    """A clip's combined scores and anomalous flags by the project's current model (Detector.score_video,
    as `vidanom score` scores it, without writing its CSV and timeline)."""
    detector = Detector.of_version(project).scoring(project.config)
    rows = list(detector.score_video(clip))
    return np.array([r.score for r in rows], float), np.array([r.anomalous for r in rows], bool)


def scene_figures(project: Project, clips: list[Path], labels: dict) -> dict[str, float]:
    """Score the clips with the current model: micro AUROC over all their frames, and the share of
    anomalous frames caught and of normal ones flagged at the model's threshold."""
    ys, ss, flags = [], [], []
    for clip in clips:
        s, f = scored(project, clip)
        ys.append(results.label_vector([tuple(x) for x in labels[clip.name]], len(s), clip.name).astype(bool))
        ss.append(s)
        flags.append(f)
    y, f = np.concatenate(ys), np.concatenate(flags)
    return {"auroc": auroc(y, np.concatenate(ss)), "caught": float(f[y].mean()), "flagged": float(f[~y].mean())}


def made_figures(project: Project, made: real_footage.MadeSet) -> dict[str, float]:
    """AUROC of the made freezes and 4x fast stretches against the rest of their clips."""
    out = {}
    for kind in ("freeze", "fast"):
        clips = made.clips[kind]
        values = [scored(project, path)[0] for path, _ in clips]
        out[kind] = auroc(np.concatenate([y for _, y in clips]), np.concatenate(values))
    return out


class Bench:
    """The projects of one run in a work folder, and how to measure them."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        data = args.data
        self.a_train = real_footage.linked(work / "a_train", sorted((data / "train").glob("*.mp4"))[:A_TRAIN])
        self.a_rest = sorted((data / "train").glob("*.mp4"))[A_TRAIN:]
        self.a_test = sorted((data / "test").glob("*.mp4"))[: args.test_clips]
        self.a_labels = json.loads((data / "labels.json").read_text())
        self.b_train, b_test, self.b_labels = make_scene_b(work)
        self.b_test = sorted(b_test.glob("*.mp4"))
        self.made = real_footage.ped1_made(data.parent, work / "made")

    def base(self) -> Project:
        """Scene A alone, trained once (reused from --work), keeping frames for the kept variant."""
        root = self.work / "base"
        if not (root / "models" / "current").exists():
            shutil.rmtree(root, ignore_errors=True)
            cfg = with_overrides(ProjectConfig(), train={"keep_frames": KEEP_FRAMES})
            t0 = time.time()
            training.train(Project.init(root, cfg), [self.a_train], scene="A")
            (root / "train_seconds").write_text(f"{time.time() - t0:.1f}")
        return Project.open(root)

    def copy(self, name: str, keep: bool) -> Project:
        """A private copy of the base project; without the frames it kept unless `keep`."""
        root = self.work / name
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(self.work / "base", root)
        project = Project.open(root)
        if not keep:
            for f in (root / "models").glob(f"*/{kept.KEPT_FILE}"):
                f.unlink()
        project.config = with_overrides(project.config, train={"keep_frames": KEEP_FRAMES if keep else 0})
        project.save_config()
        return project

    def measure(self, project: Project, seconds: float, a: bool = True, b: bool = True) -> dict:
        row: dict = {"seconds": seconds}
        if a:
            row["A"] = scene_figures(project, self.a_test, self.a_labels)
            row["made"] = made_figures(project, self.made)
        if b:
            row["B"] = scene_figures(project, self.b_test, self.b_labels)
        return row


def run_update(bench: Bench, strategy: str) -> dict:
    project = bench.copy(strategy, keep=False)
    t0 = time.time()
    training.update(project, [bench.b_train], "B", strategy=strategy)
    return bench.measure(project, time.time() - t0)


def run_recalibrated(bench: Bench, name: str) -> dict:
    """The replay update's models with A calibrated anew: on the frames the base model kept of it
    ("kept": what `update` does with train.keep_frames, whose fitting it does not change), or on all of
    A's footage ("bound", which no update reads). B is calibrated on its footage as the update did."""
    root = bench.work / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(bench.work / "replay", root)
    project = Project.open(root)
    t0 = time.time()
    if name == "kept":
        shutil.copy(bench.work / "base" / "models" / "v0001" / kept.KEPT_FILE, root / "models" / "v0002")
        project.config = with_overrides(project.config, train={"keep_frames": KEEP_FRAMES})
        training.train(project, stage="calibrate", scene="B")
    else:
        training.train(project, stage="calibrate", scene="A")
    return bench.measure(project, time.time() - t0)


def run_joint(bench: Bench) -> dict:
    root = bench.work / "joint"
    shutil.rmtree(root, ignore_errors=True)
    project = Project.init(root, ProjectConfig())
    t0 = time.time()
    training.extract(project, [bench.a_train, bench.b_train], scene="AB")
    training.train(project, [], scene="AB")
    return bench.measure(project, time.time() - t0)


def run_alone(bench: Bench) -> dict:
    root = bench.work / "alone"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.time()
    project = Project.init(root, ProjectConfig())
    training.train(project, [bench.b_train], scene="B")
    return bench.measure(project, time.time() - t0, a=False)


def run_accepts(bench: Bench) -> dict:
    """Ten accepts into A, each of one whole left-out clip, scored first as a person would before
    accepting it: A's AUROC after each, and each accept's time."""
    project = bench.copy("accepts", keep=False)
    after, seconds = [], []
    for clip in bench.a_rest:
        (r,) = results.score(project, clip)
        t0 = time.time()
        accepting.accept(project, r.key, start=0.0, end=r.frames / r.fps)
        seconds.append(time.time() - t0)
        after.append(scene_figures(project, bench.a_test, bench.a_labels))
        print(f"  accept {len(after)}: A {after[-1]['auroc']:.4f} in {seconds[-1]:.0f} s", file=sys.stderr, flush=True)
    return {"seconds": float(np.mean(seconds)), "A": after[-1], "after_each": after}


def table(rows: dict[str, dict]) -> Table:
    t = Table(title="Scene A (UCSD Ped1) then scene B (synthetic night plaza)")
    cols = ("A: Ped1 AUROC", "A normal flagged", "A freeze", "A 4x fast", "B AUROC", "B normal flagged", "seconds")
    t.add_column("model")
    for col in cols:
        t.add_column(col, justify="right")
    for name, r in rows.items():
        a, b, m = r.get("A", {}), r.get("B", {}), r.get("made", {})
        t.add_row(
            name,
            *(f"{d[k]:.4f}" if k in d else "" for d, k in ((a, "auroc"),)),
            f"{100 * a['flagged']:.1f}%" if "flagged" in a else "",
            *(f"{m[k]:.3f}" if k in m else "" for k in ("freeze", "fast")),
            f"{b['auroc']:.4f}" if "auroc" in b else "",
            f"{100 * b['flagged']:.1f}%" if "flagged" in b else "",
            f"{r['seconds']:.0f}",
        )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ucsd_ped1")
    ap.add_argument("--test-clips", type=int, default=36, help="Ped1 test clips for scene A")
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    ap.add_argument("--work", type=Path, help="folder for the projects (the scene-A model in it is reused)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own; 1 on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="vidanom-scenes-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work)
    base = bench.base()
    rows = {"trained on A": bench.measure(base, float((work / "base" / "train_seconds").read_text()))}
    runs = {
        **{n: (lambda n=n: run_update(bench, n)) for n in ("replay", "ewc", "finetune")},
        **{n: (lambda n=n: run_recalibrated(bench, n)) for n in ("kept", "bound")},
        "joint": lambda: run_joint(bench),
        "alone": lambda: run_alone(bench),
        "accepts": lambda: run_accepts(bench),
    }
    for name in args.only.split(","):
        rows[name] = runs[name]()
        print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    Console().print(table(rows))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
