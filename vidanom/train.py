"""Fitting loops: the β-VAE on frames, the LSTM-MDN on latent sequences, and calibration.

Every loop reports through a `progress(task, done, total, info)` callback and can checkpoint
after each epoch (and, on Ctrl-C, after the last finished batch), so the CLI can draw a bar and an
interrupted run can resume where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import fsutil
from .config import ProjectConfig
from .data import Split, frame_batches, window_starts
from .inference import for_inference
from .mdn import LSTMMDN, MDNConfig, mdn_nll
from .score import Calibration, CausalMean, RunningStats, Scorer, combine, components, make_scorer
from .replay import replayed_count
from .vae import BetaVAE, VAEConfig, error_map, patch_means, vae_loss

Progress = Callable[[str, int, int, dict[str, float]], None]
ExtraBatch = Callable[[int], torch.Tensor]  # batch size → replayed inputs to add to a batch
Penalty = Callable[[], torch.Tensor]  # an extra loss term on the weights (EWC)
INFER_BATCH = 256


def no_progress(task: str, done: int, total: int, info: dict[str, float]) -> None:
    """The progress callback of a caller that shows none (tests, benchmarks, library use)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import VidanomError
        raise VidanomError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint is data, never code: weights_only refuses anything but tensors and plain values."""
    from .errors import ProjectError
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; all mean the same here
        raise ProjectError(f"checkpoint {path} is damaged or unreadable ({type(exc).__name__}); "
                           "train again or restore it") from exc


def build_vae(ckpt: dict[str, Any]) -> BetaVAE:
    cfg = ckpt["config"]
    vae = BetaVAE(VAEConfig(**{**cfg, "hidden": tuple(cfg["hidden"])}))
    vae.load_state_dict(ckpt["model"])
    return vae


def build_mdn(ckpt: dict[str, Any]) -> LSTMMDN:
    mdn = LSTMMDN(MDNConfig(**ckpt["config"]))
    mdn.load_state_dict(ckpt["model"])
    return mdn


def _rng(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's random state, for a checkpoint taken mid-epoch (dropout-free, but sampling uses it)."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng(ckpt: dict[str, Any], device: torch.device) -> None:
    if "rng" in ckpt:
        torch.set_rng_state(ckpt["rng"])
    if device.type == "cuda" and "cuda_rng" in ckpt:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)


@contextmanager
def _checkpoint_on_interrupt(path: Path | None, state: Callable[[], dict[str, Any]],
                             worth_it: Callable[[], bool]) -> Iterator[None]:
    """On Ctrl-C inside the block, save a mid-epoch checkpoint (if it holds new work), then stop.

    The CLI defers Ctrl-C to the progress callback, which runs between optimiser steps, so the
    state saved is exactly that after the last finished batch; `--resume` continues from it.
    """
    try:
        yield
    except KeyboardInterrupt:
        if path is not None and worth_it():
            fsutil.save_torch(path, state())
        raise


def vae_checkpoint(vae: BetaVAE, opt: torch.optim.Optimizer, epoch: int, **extra: Any) -> dict[str, Any]:
    return {"config": asdict(vae.cfg), "model": vae.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch, **extra}


def fit_vae(vae: BetaVAE, clips: list[np.ndarray], split: Split, cfg: ProjectConfig, device: torch.device,
            epochs: int, progress: Progress = no_progress, ckpt: Path | None = None,
            start: dict[str, Any] | None = None, extra: ExtraBatch | None = None,
            penalty: Penalty | None = None, extra_share: float = 0.0) -> dict[str, float]:
    """Train the VAE for `epochs` epochs (continuing from checkpoint dict `start` if given).

    extra(n) returns n replayed inputs; each batch of the new data gets round(B·share/(1−share))
    of them, so replayed samples make up `extra_share` of every batch.
    """
    vae.to(device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.train.lr)
    first, skip = 0, 0
    if start is not None:
        opt.load_state_dict(start["optimizer"])
        first, skip = int(start["epoch"]), int(start.get("batch", 0))
    index = split.train_index()
    bs, lag = cfg.train.batch_size, cfg.frames.motion_lag
    per_epoch = -(-len(index) // bs)
    n_extra = replayed_count(bs, extra_share) if extra else 0
    stats: dict[str, float] = {}
    for epoch in range(first, epochs):
        torch.manual_seed(cfg.train.seed * 100_003 + epoch)  # reproducible, and the same after a resume
        rng = np.random.default_rng([cfg.train.seed, epoch])
        if skip:
            _set_rng(start, device)  # mid-epoch: the random state after the batches already done
        sums, done = np.zeros(3), skip
        with _checkpoint_on_interrupt(ckpt, lambda: vae_checkpoint(vae, opt, epoch, batch=done, **_rng(device)),
                                      lambda: done > skip):
            for i, x in enumerate(frame_batches(clips, index, bs, lag, rng, skip), start=skip):
                if n_extra:
                    x = torch.cat([x, extra(n_extra)])
                x = x.to(device)
                recon, mu, logvar = vae(x)
                loss, rec, kl = vae_loss(x, recon, mu, logvar, vae.cfg.beta)
                if penalty is not None:
                    loss = loss + penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done = i + 1
                sums += [loss.item(), rec.item(), kl.item()]
                n = done - skip
                stats = {"epoch": epoch + 1, "loss": sums[0] / n, "recon": sums[1] / n, "kl": sums[2] / n}
                progress("vae", epoch * per_epoch + done, epochs * per_epoch, stats)
            if ckpt is not None:
                fsutil.save_torch(ckpt, vae_checkpoint(vae, opt, epoch + 1))
        skip = 0
    vae.eval()
    return stats


@torch.inference_mode()
def encode(vae: BetaVAE, frames: np.ndarray, lag: int, device: torch.device) -> torch.Tensor:
    """Mean latents of a whole clip, chunk by chunk: (n, H, W, C) uint8 → (cells, n, D) float32."""
    scorer_ctx: torch.Tensor | None = None
    out = []
    from .data import to_input
    for s in range(0, len(frames), INFER_BATCH):
        cur = torch.from_numpy(np.array(frames[s:s + INFER_BATCH]))
        mu, _ = vae.encode(to_input(cur, lag, scorer_ctx).to(device))
        out.append(mu.flatten(2).permute(2, 0, 1).cpu())
        if lag:
            scorer_ctx = torch.from_numpy(np.array(frames[max(0, s + len(cur) - lag):s + len(cur)]))
            if len(scorer_ctx) < lag:
                scorer_ctx = torch.cat([scorer_ctx[:1].expand(lag - len(scorer_ctx), *scorer_ctx.shape[1:]), scorer_ctx])
    return torch.cat(out, 1)


def mdn_batches(latents: list[torch.Tensor], lengths: list[int], seq_len: int, windows: int,
                rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of `windows` windows × all cells: (B, T + 1, D) sequences and (B,) cell ids."""
    starts = window_starts(lengths, seq_len)
    # an epoch sees each frame about once: one window per seq_len start positions, drawn afresh each epoch
    order = starts[rng.permutation(len(starts))[:max(1, len(starts) // seq_len)]]
    for s in range(0, len(order), windows):
        seqs, cells = [], []
        for clip, t in order[s:s + windows]:
            z = latents[clip][:, t:min(t + seq_len + 1, lengths[clip])]
            seqs.append(z)
            cells.append(torch.arange(z.shape[0]))
        t_min = min(z.shape[1] for z in seqs)
        yield torch.cat([z[:, :t_min] for z in seqs]), torch.cat(cells)


def fit_mdn(mdn: LSTMMDN, latents: list[torch.Tensor], lengths: list[int], cfg: ProjectConfig,
            device: torch.device, epochs: int, progress: Progress = no_progress, ckpt: Path | None = None,
            start: dict[str, Any] | None = None) -> dict[str, float]:
    """Teach the LSTM-MDN to predict each cell's next latent. latents: per clip (cells, n, D)."""
    mdn.to(device).train()
    opt = torch.optim.Adam(mdn.parameters(), lr=cfg.train.lr)
    first, skip = (int(start["epoch"]), int(start.get("batch", 0))) if start else (0, 0)
    if start:
        opt.load_state_dict(start["optimizer"])
    windows = 8  # windows per batch; each brings every cell of the grid
    n_batches = -(-max(1, len(window_starts(lengths, cfg.train.seq_len)) // cfg.train.seq_len) // windows)
    stats: dict[str, float] = {}

    def checkpoint(epoch: int, **extra: Any) -> dict[str, Any]:
        return {"config": asdict(mdn.cfg), "model": mdn.state_dict(), "optimizer": opt.state_dict(),
                "epoch": epoch, **extra}

    for epoch in range(first, epochs):
        torch.manual_seed(cfg.train.seed * 100_003 + 50_000 + epoch)
        rng = np.random.default_rng([cfg.train.seed, 1, epoch])
        if skip:
            _set_rng(start, device)
        total, done = 0.0, skip
        with _checkpoint_on_interrupt(ckpt, lambda: checkpoint(epoch, batch=done, **_rng(device)),
                                      lambda: done > skip):
            batches = mdn_batches(latents, lengths, cfg.train.seq_len, windows, rng)
            for i, (z, cells) in enumerate(itertools.islice(batches, skip, None), start=skip):
                z, cells = z.to(device), cells.to(device)
                log_pi, mu, log_s, _ = mdn(z[:, :-1], cells)
                loss = mdn_nll(z[:, 1:], log_pi, mu, log_s).mean() / z.shape[-1]  # per dimension
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(mdn.parameters(), 1.0)
                opt.step()
                done = i + 1
                total += loss.item()
                stats = {"epoch": epoch + 1, "nll": total / (done - skip)}
                progress("mdn", epoch * n_batches + done, epochs * n_batches, stats)
            if ckpt is not None:
                fsutil.save_torch(ckpt, checkpoint(epoch + 1))
        skip = 0
    mdn.eval()
    return stats


def _column_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each column over its non-NaN rows; (0, inf) for a column with none (no MDN),
    so that standardising by them makes that component count for nothing."""
    mean, std = torch.zeros(x.shape[1]), torch.full((x.shape[1],), float("inf"))
    for j in range(x.shape[1]):
        col = x[:, j][~torch.isnan(x[:, j])]
        if len(col) > 1:
            mean[j], std[j] = col.mean(), col.std().clamp_min(1e-6)
    return mean, std


def _clip_maps(scorer: Scorer, frames: np.ndarray):
    for s in range(0, len(frames), INFER_BATCH):
        yield s, scorer.maps(np.asarray(frames[s:s + INFER_BATCH]))


def calibrate(vae: BetaVAE, mdn: LSTMMDN | None, clips: list[np.ndarray], split: Split, cfg: ProjectConfig,
              device: torch.device, scene: str, progress: Progress = no_progress) -> Calibration:
    """One scene's statistics: position-wise on its training frames, then component scales and
    threshold on its held-out ones."""
    vae = for_inference(vae, device)  # the copy scoring uses: the same numbers, 1.3-2.5× faster on a CPU
    total = 2 * sum(len(c) for c in clips)
    err, kl, nll, pixels, done = RunningStats(), RunningStats(), RunningStats(), RunningStats(), 0
    for frames, end in zip(clips, split.train_end):
        for s, m in _clip_maps(make_scorer(vae, mdn, cfg, device), frames):
            k = max(0, min(end - s, len(m.err)))
            err.add(patch_means(m.err[:k], cfg.score.patch, cfg.score.patch_stride))
            kl.add(m.kl[:k])
            nll.add(m.nll[:k])
            pixels.add(m.frame[:k])
            done += len(m.err)
            progress("calibrate", done, total, {})
    (em, es), (km, ks), (fm, fs) = err.result(), kl.result(), pixels.result()
    nm, ns = nll.result() if nll.n else (torch.zeros_like(km), torch.ones_like(ks))
    cal = Calibration(em[None], es[None], km[None], ks[None], nm[None], ns[None], torch.zeros(1, 3),
                      torch.ones(1, 3), torch.zeros(1), mdn is not None, [scene], fm[None], fs[None])
    comps, held = [], []
    for frames, end in zip(clips, split.train_end):
        c = torch.cat([components(m, cal, cfg.score)[:, 0]
                       for _, m in _clip_maps(make_scorer(vae, mdn, cfg, device), frames)])
        done += len(frames)
        progress("calibrate", done, total, {})
        comps.append(c)
        held.append(c[end:] if end < len(c) else c)  # a clip too short to split calibrates on itself
    mean, std = _column_stats(torch.cat(held))
    cal.comp_mean, cal.comp_std = mean[None], std[None]
    scores = []
    for c, end in zip(comps, split.train_end):
        s = CausalMean(cfg.score.smooth)(combine(c[:, None], cal, cfg.score.weights)[:, 0])
        scores.append(s[end:] if end < len(s) else s)
    cal.thresholds = torch.quantile(torch.cat(scores).double(), cfg.score.threshold_quantile).float()[None]
    return cal


@torch.no_grad()
def patch_error_stats(vae: BetaVAE, inputs: Iterable[torch.Tensor], cfg: ProjectConfig
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (P,) per patch position of the error the score measures, on model inputs (B, C, H, W)."""
    scorer = make_scorer(vae, None, cfg, torch.device("cpu"))
    stats = RunningStats()
    for x in inputs:
        x = x.to(next(vae.parameters()).device)
        err = error_map(x[:, scorer.recon_from:], vae(x, sample=False)[0][:, scorer.recon_from:])
        stats.add(patch_means(err.cpu(), cfg.score.patch, cfg.score.patch_stride))
    return stats.result()
