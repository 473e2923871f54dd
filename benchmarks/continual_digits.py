"""Continual anomaly detection on MNIST digits (the protocol of Wiewel & Yang, ICASSP 2019).

Digit 0 is the anomaly class. Tasks are digits 1, 2, …, 9, each seen only during its own task.
After task i, the test split's digit 0 (anomalous) is scored against digits 1…i (normal) by the
current model, and that task's AUROC is computed on those images alone (never pooled with earlier
tasks' scores). Strategies: joint (all tasks so far: the upper bound), replay (generative replay
from a frozen copy of the previous model), ewc, and finetune (new task only: the lower bound).

    python benchmarks/continual_digits.py --data ../shared/data/mnist --json digits.json --plot digits.png
    python benchmarks/continual_digits.py --data ../shared/data/mnist --strategies joint replay --seed 1 --order 2

It trains through exactly the code of `vidanom update`: `vidanom.strategies.plan` (replay with its
distillation, EWC, fine-tuning), `vidanom.fitting.fit_vae` and `vidanom.strategies.consolidate` (each
task's latent Gaussian, the EWC state), with the settings of a project's config (`--set
train.ewc_strength=1000`, `--set train.replay_distill=0` to try others); the model from
`ProjectConfig.vae_config()`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vidanom import strategies
from vidanom.config import FrameConfig, ProjectConfig, TrainConfig, VAEOptions, parse_overrides, with_overrides
from vidanom.data import Split, to_input
from vidanom.fitting import fit_vae
from vidanom.metrics import auroc
from vidanom.replay import batch_parts
from vidanom.training import EWC_SAMPLES, _seeded
from vidanom.vae import BetaVAE, error_map, kl_map, patch_means

STRATEGIES = ("joint", "replay", "ewc", "finetune")
ORDER_STRIDE = 100  # --order N draws task i's batches with seed + i + 100·N: apart from every other order's
SCORES = ("elbo", "recon", "kl", "patch")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed) as an array of its declared shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data: Path, prefix: str, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as (n, H, W, 1) uint8 frames, zero-padded by `pad` pixels on each side, and labels."""
    images = read_idx(data / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data / f"{prefix}-labels-idx1-ubyte.gz")
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))[..., None]
    return np.ascontiguousarray(images), labels


def by_digit(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> dict[int, np.ndarray]:
    """Images of each digit, a random subset of at most `limit` of them (all if None)."""
    rng = np.random.default_rng(seed)
    out = {}
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        if limit is not None and len(idx) > limit:
            idx = np.sort(rng.choice(idx, limit, replace=False))
        out[d] = images[idx]
    return out


@torch.no_grad()
def score_images(vae: BetaVAE, frames: np.ndarray, patch: int) -> dict[str, np.ndarray]:
    """Deterministic anomaly scores (mean latent) of every image, by each candidate score."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in SCORES}
    for s in range(0, len(frames), 512):
        x = to_input(torch.from_numpy(frames[s : s + 512]), 0)
        recon, mu, logvar = vae(x, sample=False)
        err, kl = error_map(x, recon), kl_map(mu, logvar).flatten(1).sum(1)
        rec = err.flatten(1).sum(1)
        for name, v in (
            ("elbo", rec + vae.cfg.beta * kl),
            ("recon", rec),
            ("kl", kl),
            ("patch", patch_means(err, patch, patch).amax(1)),
        ):
            out[name].append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(vae: BetaVAE, test: dict[int, np.ndarray], seen: list[int], patch: int) -> dict:
    """AUROC of digit 0 against the digits seen so far, per score; and per seen digit (0 vs d)."""
    vae.eval()
    scores = {d: score_images(vae, test[d], patch) for d in [0, *seen]}
    y = np.concatenate([np.ones(len(test[0]))] + [np.zeros(len(test[d])) for d in seen])
    pooled = {name: auroc(y, np.concatenate([scores[d][name] for d in [0, *seen]])) for name in SCORES}
    per_digit = {
        name: {
            d: auroc(np.r_[np.ones(len(test[0])), np.zeros(len(test[d]))], np.r_[scores[0][name], scores[d][name]])
            for d in seen
        }
        for name in SCORES
    }
    return {"auroc": pooled, "per_digit": per_digit}


def task_inputs(frames: np.ndarray, limit: int | None = None) -> list[torch.Tensor]:
    """Model inputs of (at most `limit` of) a task's images, in batches."""
    return list(to_input(torch.from_numpy(frames[:limit]), 0).split(256))


def run_strategy(
    name: str,
    tasks: list[int],
    train: dict[int, np.ndarray],
    test: dict[int, np.ndarray],
    cfg: ProjectConfig,
    args: argparse.Namespace,
) -> tuple[list[dict], BetaVAE]:
    """Learn the tasks in order with one strategy: the evaluations after each task, and the final model.

    replay, ewc and finetune run exactly what `vidanom update` runs: vidanom.strategies.plan before a
    task, vidanom.fitting.fit_vae, and vidanom.strategies.consolidate after it. joint trains on every
    task so far (the upper bound).
    """
    vae = _seeded(lambda: BetaVAE(cfg.vae_config()), cfg.train.seed)  # every strategy starts from the same weights
    prior, ewc, results = None, None, []  # the tasks' latent Gaussians and EWC state, as a model version keeps them
    for i, digit in enumerate(tasks):
        t0, c0 = time.time(), time.process_time()
        # fresh batches and noise for every task; --order draws others from the same initial weights
        task_cfg = with_overrides(cfg, train={"seed": cfg.train.seed + i + ORDER_STRIDE * args.order})
        scene = f"task{i + 1}"
        hooks = (
            strategies.plan(name, vae, mdn=None, prior=prior, ewc=ewc, cfg=task_cfg, scene=scene, new_frames=0)
            if name != "joint" and prior is not None
            else None
        )
        clips = [train[d] for d in tasks[: i + 1]] if name == "joint" else [train[digit]]
        # `epochs` passes over the task's own images (every task's, for joint), which fill the batch
        # but for its replayed share: replay takes as many optimiser steps as joint training
        new = batch_parts(task_cfg.train.batch_size, hooks.share if hooks else 0.0)[0]
        steps = -(-args.epochs * sum(len(c) for c in clips) // new)
        stats = fit_vae(
            vae,
            clips,
            Split.none([len(c) for c in clips]),
            task_cfg,
            torch.device("cpu"),
            extra=hooks.extra if hooks else None,
            penalty=hooks.penalty if hooks else None,
            extra_share=hooks.share if hooks else 0.0,
            steps=steps,
        )
        prior, ewc = strategies.consolidate(
            hooks, vae, task_inputs(train[digit]), task_inputs(train[digit], EWC_SAMPLES), scene, ewc, task_cfg
        )
        res = evaluate(vae, test, tasks[: i + 1], args.patch)
        res.update(
            digit=digit,
            seconds=time.time() - t0,
            cpu_seconds=time.process_time() - c0,
            replay_share=hooks.share if hooks else 0.0,
            loss=stats.get("loss"),
        )
        results.append(res)
        print(
            f"  {name:8s} task {digit}: AUROC {res['auroc'][args.score]:.4f} (replay share "
            f"{res['replay_share']:.2f}, {res['seconds']:.0f} s, {res['cpu_seconds']:.0f} s CPU)",
            file=sys.stderr,
            flush=True,
        )
    return results, vae


def print_table(tasks: list[int], table: dict[str, list[float]]) -> None:
    names = list(table)
    print("task  " + "".join(f"{n:>10s}" for n in names))
    for i, d in enumerate(tasks):
        print(f"{d:>4d}  " + "".join(f"{table[n][i]:>10.4f}" for n in names))
    print("mean  " + "".join(f"{np.mean(table[n]):>10.4f}" for n in names))


def save_plot(path: Path, tasks: list[int], table: dict[str, list[float]], title: str) -> None:
    from matplotlib.figure import Figure  # Agg through Figure: files only, never a window

    fig = Figure(figsize=(6.4, 4), dpi=100)
    ax = fig.add_subplot()
    for name, values in table.items():
        ax.plot(tasks, values, marker="o", label=name)
    ax.set_xlabel("after task (digit learned)")
    ax.set_ylabel("AUROC, digit 0 vs digits seen")
    ax.set_xticks(tasks)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def save_samples(path: Path, models: dict[str, BetaVAE], n: int = 16) -> None:
    """A row of prior samples per final model: what replay would feed the next task."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(n * 0.5, len(models) * 0.55 + 0.2), dpi=100)
    for r, (name, vae) in enumerate(models.items()):
        with torch.no_grad():
            x = vae.sample_prior(n, torch.Generator().manual_seed(0)).clamp(0, 1)[:, 0]
        ax = fig.add_subplot(len(models), 1, r + 1)
        ax.imshow(torch.cat(list(x), 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(name, fontsize=8, loc="left")
    fig.savefig(path)


def build_config(args: argparse.Namespace, size: int) -> ProjectConfig:
    cfg = ProjectConfig(
        frames=FrameConfig(width=size, height=size, channels=1, motion_lag=0),  # the plain image
        vae=VAEOptions(hidden=tuple(args.hidden), latent_channels=args.latent, beta=args.beta, coords=args.coords),
        train=TrainConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed),
    )
    return with_overrides(cfg, **parse_overrides(args.set))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with the four MNIST IDX .gz files")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="save a line plot of AUROC after each task here")
    ap.add_argument("--samples", type=Path, help="save prior samples of every final model here")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per task")
    ap.add_argument("--tasks", type=int, nargs="+", default=list(range(1, 10)), help="digits, in order")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--per-digit", type=int, default=2000, help="training images per digit (0 = all)")
    ap.add_argument("--score", default="elbo", choices=SCORES, help="the score the table shows")
    ap.add_argument("--patch", type=int, default=4, help="patch size of the 'patch' score")
    ap.add_argument("--hidden", type=int, nargs="+", default=[16, 32, 32, 64, 64])
    ap.add_argument("--latent", type=int, default=16, help="latent channels per grid cell")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--coords", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. train.ewc_strength=1000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--order",
        type=int,
        default=0,
        help="another order of batches (and sampling noise) from the same initial weights and images: joint training "
        "itself ends differently from one order to the next",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    ap.add_argument("--jobs", type=int, default=1, help="strategies trained at once, in separate processes")
    return ap.parse_args()


def load_data(args: argparse.Namespace) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], int]:
    """Training and test frames by digit, zero-padded so the VAE's 2**len(hidden) divides their size."""
    raw = read_idx(args.data / "train-images-idx3-ubyte.gz").shape[1]
    down = 2 ** len(args.hidden)
    pad = (-raw % down + 1) // 2
    if (raw + 2 * pad) % down:
        raise SystemExit(f"{raw}px images cannot be padded evenly to a multiple of {down}")
    train = by_digit(*load_split(args.data, "train", pad), args.per_digit or None, args.seed)
    test = by_digit(*load_split(args.data, "t10k", pad), None, args.seed)
    return train, test, raw + 2 * pad


def run_all(
    args: argparse.Namespace, train: dict[int, np.ndarray], test: dict[int, np.ndarray], cfg: ProjectConfig
) -> tuple[dict[str, list[dict]], dict[str, BetaVAE]]:
    """Every strategy, `--jobs` at a time. Each seeds itself, so parallel runs change only the wall time."""
    work = (args.tasks, train, test, cfg, args)
    if args.jobs <= 1:
        out = {name: run_strategy(name, *work) for name in args.strategies}
    else:
        ctx = multiprocessing.get_context("spawn")  # a forked child would inherit torch's thread pools
        with ProcessPoolExecutor(
            args.jobs, mp_context=ctx, initializer=torch.set_num_threads, initargs=(args.threads,)
        ) as pool:
            heavy_first = sorted(args.strategies, key=lambda n: n not in ("joint", "replay"))
            futures = {name: pool.submit(run_strategy, name, *work) for name in heavy_first}
            out = {name: futures[name].result() for name in args.strategies}
    return {n: r for n, (r, _) in out.items()}, {n: m for n, (_, m) in out.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if 0 in args.tasks:
        raise SystemExit("digit 0 is the anomaly class and cannot be a task")
    train, test, size = load_data(args)
    cfg = build_config(args, size)
    t0 = time.time()
    runs, models = run_all(args, train, test, cfg)
    seconds = time.time() - t0
    cpu_seconds = sum(r["cpu_seconds"] for res in runs.values() for r in res)  # the machine may be shared
    table = {name: [r["auroc"][args.score] for r in res] for name, res in runs.items()}
    print(
        f"AUROC of digit 0 vs digits seen, score '{args.score}', {args.per_digit or 'all'} training images "
        f"per digit, {args.epochs} epochs per task, latent grid {cfg.vae_config().grid}: {seconds:.0f} s "
        f"({cpu_seconds:.0f} s CPU; {args.jobs} job(s) × {args.threads} thread(s))"
    )
    print_table(args.tasks, table)
    if args.plot:
        save_plot(args.plot, args.tasks, table, f"MNIST, anomaly = digit 0, score '{args.score}'")
    if args.samples:
        save_samples(args.samples, models)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tasks": args.tasks,
                    "score": args.score,
                    "auroc": table,
                    "mean_over_tasks": {n: float(np.mean(v)) for n, v in table.items()},
                    "runs": runs,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "config": asdict(cfg),
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
