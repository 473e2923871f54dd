"""Continual learning on video: scene A is UCSD Ped1, scene B a visibly different synthetic scene (the
sample-video generator's night plaza, with its own anomalies). Train on A, then `update` with B, and
report micro AUROC on A's and B's test clips before and after, per strategy:

    replay          generative replay of the VAE and dreamed clips for the LSTM-MDN (the default)
    replay-no-dream VAE replay only: what the dreamed sequences add
    ewc, finetune   the baselines
    joint           one model trained on A and B together (upper bound)

    python benchmarks/continual_scenes.py --data ../shared/data/ucsd_ped1 [--train-clips 12] [--json FILE]

Everything goes through the library calls behind `vidanom train`, `update` and `score`.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_videos"))  # the scenes of the sample videos
import scenes as synth  # noqa: E402
from rich.console import Console
from rich.table import Table

from vidanom import results, training
from vidanom.config import ProjectConfig, fixed_steps, with_overrides
from vidanom.metrics import auroc
from vidanom.project import Project

B_TRAIN, B_TEST = 6, 4  # synthetic clips of scene B
B_FRAMES = 200
B_ANOMALIES = [("fast", 60, 110), ("wrong_way", 40, 120), ("intruder", 80, 150), ("fast", 120, 170)]


def make_scene_b(root: Path) -> tuple[Path, Path, dict[str, list[list[int]]]]:
    train, test = root / "b_train", root / "b_test"
    train.mkdir(parents=True)
    test.mkdir()
    for i in range(B_TRAIN):
        synth.write_clip(train / f"b_train_{i:02d}.mp4", synth.SCENE_B, B_FRAMES, [], seed=500 + i)
    labels = {}
    for i, (kind, a, b) in enumerate(B_ANOMALIES[:B_TEST]):
        ranges = synth.write_clip(test / f"b_test_{i:02d}.mp4", synth.SCENE_B, B_FRAMES, [(kind, a, b)], seed=600 + i)
        labels[f"b_test_{i:02d}.mp4"] = [list(r) for r in ranges]
    return train, test, labels


def scene_auroc(project: Project, test: Path, labels: dict) -> float:
    """Score every test clip of a scene with the current model; micro AUROC over all its frames."""
    results.score(project, test)
    ys, ss = [], []
    for name, ranges in sorted(labels.items()):
        s, _ = results.read_scores(project, name)
        ys.append(results.label_vector([tuple(r) for r in ranges], len(s), name))
        ss.append(s)
    return auroc(np.concatenate(ys), np.concatenate(ss))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ucsd_ped1")
    ap.add_argument("--train-clips", type=int, default=34, help="Ped1 training clips for scene A")
    ap.add_argument("--test-clips", type=int, default=36, help="Ped1 test clips for scene A")
    ap.add_argument("--steps", type=int, help="optimiser steps per stage (default: the config's)")
    ap.add_argument("--strategies", default="replay,replay-no-dream,ewc,finetune,joint")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--keep",
        type=Path,
        help="build the projects in this folder and keep them; a scene-A model already in it is used again",
    )
    args = ap.parse_args()
    work = args.keep if args.keep else Path(tempfile.mkdtemp(prefix="vidanom-scenes-"))
    reuse = (work / "base" / "models" / "current").exists()  # a kept run: keep its scene-A model too
    for name in ("b_train", "b_test", "a_train", "a_test", *([] if reuse else ["base"])):
        shutil.rmtree(work / name, ignore_errors=True)
    b_train, b_test, b_labels = make_scene_b(work)
    a_train, a_test = work / "a_train", work / "a_test"
    for folder, split, count in ((a_train, "train", args.train_clips), (a_test, "test", args.test_clips)):
        folder.mkdir()
        for p in sorted((args.data / split).glob("*.mp4"))[:count]:
            (folder / p.name).symlink_to(p.resolve())
    a_labels = {k: v for k, v in json.loads((args.data / "labels.json").read_text()).items() if (a_test / k).exists()}
    steps = fixed_steps(args.steps) if args.steps else {}
    cfg = with_overrides(ProjectConfig(), train=steps)
    t0 = time.time()
    if reuse:
        base = Project.open(work / "base")
    else:
        base = Project.init(work / "base", cfg)
        training.train(base, [a_train], scene="A")
    rows = {
        "before update (A only)": (
            scene_auroc(base, a_test, a_labels),
            scene_auroc(base, b_test, b_labels),
            time.time() - t0,
        )
    }
    for strategy in args.strategies.split(","):
        root = work / strategy
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.time()
        if strategy == "joint":
            project = Project.init(root, base.config)
            training.extract(project, [a_train, b_train], scene="AB")
            training.train(project, [], scene="AB")
        else:
            shutil.copytree(base.root, root)
            project = Project.open(root)
            name = "replay" if strategy == "replay-no-dream" else strategy
            training.update(project, [b_train], "B", strategy=name, dreams=strategy != "replay-no-dream")
        seconds = time.time() - t0
        rows[strategy] = (scene_auroc(project, a_test, a_labels), scene_auroc(project, b_test, b_labels), seconds)
    table = Table(title="Scene A (UCSD Ped1) then scene B (synthetic night plaza): micro AUROC per scene")
    for col in ("model", "A: Ped1", "B: synthetic", "mean", "fit time"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, (a, b, s) in rows.items():
        table.add_row(name, f"{a:.4f}", f"{b:.4f}", f"{(a + b) / 2:.4f}", f"{s:.0f} s")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({k: {"A": a, "B": b, "seconds": s} for k, (a, b, s) in rows.items()}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
