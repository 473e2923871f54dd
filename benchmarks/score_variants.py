"""What a model choice costs in scoring speed: `vidanom score` in-process with the default config and with
config variants, against decoding alone, in interleaved rounds (so a busy spell of the machine falls on
every kind of run alike).

    python benchmarks/score_variants.py                                   # default vs the previous default
    python benchmarks/score_variants.py --variant "vae.hidden=(8,16,32);mdn.hidden=32" --variant "mdn.hidden=64"

Every --variant is one project (several `a=b` overrides joined by ';'). The clip is throughput.py's:
a 60 s 720p H.264 clip with moving shapes; each project trains on its first 20 s (600 + 600 steps).
Prints frames/s and the median (and range) over rounds of each one's ratio to the floor of that round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from throughput import copy_packets, make_clip  # the same clip as the throughput benchmark

from vidanom import results, training
from vidanom.config import ProjectConfig, fixed_steps, parse_overrides, with_overrides
from vidanom.project import Project
from vidanom.video import Source, iter_chunks

PREVIOUS_DEFAULT = "vae.hidden=(16,32,64);mdn.hidden=64"


def trained(root: Path, overrides: str, train_clip: Path) -> Project:
    """A project with these overrides, trained on train_clip (kept and reused if root holds one)."""
    if (root / "models" / "current").exists():
        return Project.open(root)
    sets = parse_overrides([o for o in overrides.split(";") if o])
    sets["train"] = {**fixed_steps(600), **sets.get("train", {})}
    project = Project.init(root, with_overrides(ProjectConfig(), **sets))
    training.train(project, [train_clip], device=torch.device("cpu"))
    return project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", help=f"overrides of one variant (default: {PREVIOUS_DEFAULT})")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workdir", type=Path, help="keep the clip and projects here (default: a temporary folder)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vidanom-variants-"))
    work.mkdir(parents=True, exist_ok=True)
    clip = work / "clip_60s.mp4"
    if not clip.exists():
        make_clip(clip, 60.0)
    train_clip = work / "train_20s.mp4"
    if not train_clip.exists():
        copy_packets(clip, train_clip, seconds=20.0)
    variants = {"default": "", **{v: v for v in (args.variant or [PREVIOUS_DEFAULT])}}
    projects = {name: trained(work / f"project_{i}", o, train_clip) for i, (name, o) in enumerate(variants.items())}
    fc, batch = projects["default"].config.frames, projects["default"].config.score.batch_size
    runs = {"decode alone (floor)": lambda: sum(len(c) for c in iter_chunks(Source(clip), fc, batch))}
    runs.update({f"score: {name}": (lambda p=p: results.score(p, clip)) for name, p in projects.items()})
    for p in projects.values():
        results.score(p, train_clip)  # warm-up: imports, first torch calls
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    floor = seconds["decode alone (floor)"]
    frames = sum(len(c) for c in iter_chunks(Source(clip), fc, batch))
    width = max(map(len, runs))
    print(f"{frames} frames of 720p H.264, {args.rounds} interleaved rounds")
    for name, ts in seconds.items():
        ratios = [f / t for f, t in zip(floor, ts)]
        print(
            f"{name:<{width}}  {frames / statistics.median(ts):6.0f} frames/s  ratio {statistics.median(ratios):.3f}"
            f" ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
