"""Quality on real footage: train on UCSD Ped1's normal clips, score all 36 test clips, and report
frame-level micro AUROC (all 7200 frames pooled, raw scores) per score component and combined.

    python benchmarks/ped1.py --data ../shared/data/ucsd_ped1
    python benchmarks/ped1.py --set vae.beta=0.3 --set score.patch=4     # try a variant

It goes through the same library calls as `vidanom train` and `vidanom score`.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vidanom import results, training
from vidanom.config import ProjectConfig, parse_overrides, with_overrides
from vidanom.metrics import summary
from vidanom.project import Project
from vidanom.scoring import COMPONENTS, CausalMean


def read_components(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    comps = np.array([[float(r[c]) if r[c] else np.nan for c in COMPONENTS] for r in rows])
    return comps, np.array([float(r["score"]) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ucsd_ped1")
    ap.add_argument("--project", type=Path, help="project folder to use (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. vae.beta=0.3")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--skip-train", action="store_true", help="score with the project's current model")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    root = args.project or Path(tempfile.mkdtemp(prefix="vidanom-ped1-"))
    cfg = with_overrides(ProjectConfig(), **parse_overrides(args.set))
    project = Project.open(root) if args.skip_train else Project.init(root, cfg)
    t0 = time.time()
    if not args.skip_train:
        training.train(project, [args.data / "train"])
    train_s = time.time() - t0
    t1 = time.time()
    results.score(project, args.data / "test")
    score_s = time.time() - t1
    labels = results.read_labels(args.data / "labels.json")
    ys, comps, combined = [], [], []
    for name in sorted(labels):
        c, s = read_components(project.scores_dir / f"{name}.csv")
        ys.append(results.label_vector(labels[name], len(s), name))
        comps.append(c)
        combined.append(s)
    y = np.concatenate(ys)
    rows = {}
    for i, name in enumerate(COMPONENTS):
        col = np.concatenate([c[:, i] for c in comps])
        if np.isnan(col).all():
            continue
        rows[name] = summary(y, np.nan_to_num(col, nan=np.nanmin(col)))["auroc"]
        smooth = np.concatenate(
            [
                CausalMean(project.config.score.smooth)(
                    torch.from_numpy(np.nan_to_num(c[:, i], nan=np.nanmin(col))).float()
                ).numpy()
                for c in comps
            ]
        )
        rows[f"{name} (smoothed)"] = summary(y, smooth)["auroc"]
    result = summary(y, np.concatenate(combined))
    rows["combined"] = result["auroc"]
    table = Table(title=f"UCSD Ped1, {len(y)} test frames, micro AUROC on raw scores")
    table.add_column("score")
    table.add_column("AUROC", justify="right")
    for name, v in rows.items():
        table.add_row(name, f"{v:.4f}")
    table.add_row("AUPRC (combined)", f"{result['auprc']:.4f}")
    table.add_row("EER (combined)", f"{result['eer']:.4f}")
    table.add_row("train time", f"{train_s:.0f} s")
    table.add_row("score time (7200 frames)", f"{score_s:.0f} s")
    Console().print(table)
    print("config overrides:", args.set, " project:", root)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "auroc": rows,
                    "auprc": result["auprc"],
                    "eer": result["eer"],
                    "train_seconds": train_s,
                    "score_seconds": score_s,
                    "overrides": args.set,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
