"""Fitting loops: the β-VAE on frames and the LSTM-MDN on latent sequences.

Each stage runs a budget of optimiser steps, not of epochs: 40 s of footage and 4 hours get a model
that has converged alike (counted in epochs, 40 s of footage was 56 steps, and the reconstructions
a grey blur). Every `eval_every` steps the model is evaluated on held-out frames; the stage stops
early once that loss has not improved for `patience` evaluations, and keeps the best weights.

Every loop reports through a `progress(task, done, total, info)` callback and checkpoints at each
evaluation (and, on Ctrl-C, after the last finished step). Batches and sampling noise are drawn
from generators seeded by the step number, so a resumed run continues exactly as an uninterrupted
one would have.

Under torchrun (see distributed) every rank runs the same loop on its part of each step's batch;
the gradients are averaged, rank 0 evaluates and decides when to stop, and only it checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed, fsutil, interrupt
from .config import ProjectConfig, TrainConfig
from .distributed import Group
from .data import (
    UNTIMED,
    MotionPlane,
    Split,
    Timing,
    as_plane,
    gaps_of,
    inputs,
    premade,
    sample_batch,
    spread,
    to_input,
    window_starts,
)
from .errors import ProjectError, VidanomError
from .mdn import LSTMMDN, MDNConfig, change, mdn_nll
from .progress import Progress, no_progress
from .replay import batch_parts
from .vae import BetaVAE, VAEConfig, vae_loss
from .zones import Zones

ExtraBatch = Callable[[int, torch.Generator], torch.Tensor]  # (batch size, generator) → replayed inputs
Penalty = Callable[[torch.Generator], torch.Tensor]  # an extra loss term (EWC, replay's distillation)
INFER_BATCH = 256
VAL_FRAMES = 512  # held-out frames the β-VAE is evaluated on
VAL_WINDOWS = 32  # held-out windows (of every cell) the LSTM-MDN is evaluated on
# windows per LSTM-MDN batch; each brings every cell of the grid. The LSTM-MDN learns from its steps more
# than from their size: as many steps of fewer windows scored every camera as well, in far less time
# (README, "How a default is chosen")
MDN_WINDOWS = 2
# a made-up fast window keeps every 2nd, 3rd or 4th latent of a longer one (fast_margin): what a
# fast-forward, or one region hurrying, looks like to a cell's sequence
FAST_SKIPS = (2, 3, 4)
UPDATE_MIN_STEPS = 500  # an update's least β-VAE steps, however short its footage (see update_budget)
MIN_GAIN = 1e-3  # a held-out loss better by less than this share does not count as progress
PREMADE_BYTES = 256 * 2**20  # footage whose model inputs fit here has them made once (Ped1's 34 clips: 223 MB)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VidanomError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint is data, never code: weights_only refuses anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; all mean the same here
        raise ProjectError(
            f"checkpoint {path} is damaged or unreadable ({type(exc).__name__}); train again or restore it"
        ) from exc


def build_vae(ckpt: dict[str, Any]) -> BetaVAE:
    cfg = ckpt["config"]
    vae = BetaVAE(VAEConfig(**{**cfg, "hidden": tuple(cfg["hidden"])}))
    vae.load_state_dict(ckpt["model"])
    return vae


def build_mdn(ckpt: dict[str, Any]) -> LSTMMDN:
    # a model saved before the LSTM-MDN read changes had neither option
    mdn = LSTMMDN(MDNConfig(**{"delta": False, "residual": False, **ckpt["config"]}))
    mdn.load_state_dict(ckpt["model"])
    return mdn


def step_generator(seed: int, stage: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one optimiser step: the same step of the same run always draws alike
    (on each rank of a distributed run its own draws; rank 0's are those of a single process)."""
    value = (seed * 1_000_003 + stage) * 1_000_003 + step
    return torch.Generator().manual_seed((value * 1_000_003 + rank if rank else value) % 2**63)


def learning_rate(tc: TrainConfig, step: int, steps: int) -> float:
    """Cosine decay from lr to lr/10 over the step budget."""
    return tc.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(step, steps) / max(1, steps))))


@dataclass
class Fitting:
    """Where a stage stands: what a checkpoint holds besides the weights and the optimiser."""

    step: int = 0
    best: float = math.inf  # the best held-out loss so far
    best_state: dict[str, torch.Tensor] | None = None  # the weights that reached it (on the CPU)
    bad: int = 0  # evaluations since it improved
    held: dict[str, float] = field(default_factory=dict)  # the latest held-out evaluation
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def improve(self, model: torch.nn.Module, held: dict[str, float]) -> None:
        """Record an evaluation; keep the weights if the loss improved."""
        self.held = held
        if held["loss"] < self.best - MIN_GAIN * abs(self.best if math.isfinite(self.best) else 0.0):
            self.best, self.bad = held["loss"], 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1


@contextmanager
def _checkpoint_on_interrupt(path: Path | None, state: Callable[[], dict[str, Any]]) -> Iterator[None]:
    """On Ctrl-C inside the block, save the state after the last finished step, then stop.

    The CLI defers Ctrl-C to the progress callback, which runs between optimiser steps, so the
    saved state is consistent; `--resume` continues from it.
    """
    try:
        yield
    except KeyboardInterrupt:
        if path is not None:
            fsutil.save_torch(path, state())
        raise


def _fit(
    task: str,
    model: BetaVAE | LSTMMDN,
    *,
    opt: torch.optim.Optimizer,
    tc: TrainConfig,
    steps: int,
    step: Callable[[int], dict[str, float]],
    evaluate: Callable[[], dict[str, float]],
    progress: Progress,
    ckpt: Path | None,
    start: dict[str, Any] | None,
    group: Group | None = None,
) -> Fitting:
    """The loop both stages share: `step(i)` computes the loss of optimiser step i and calls
    backward, `evaluate()` measures the model on held-out data ({"loss": ..., ...}). Restores the
    best weights at the end. In a distributed group, when to evaluate and to stop is agreed by all
    ranks: rank 0 evaluates and decides, a Ctrl-C on any rank stops them all after the same step."""
    state = Fitting()
    if start is not None:
        model.load_state_dict(start["model"])
        opt.load_state_dict(start["optimizer"])
        state = Fitting(**start["fitting"])
    deadline = time.monotonic() + tc.max_minutes * 60 if tc.max_minutes > 0 else math.inf

    def checkpoint() -> dict[str, Any]:
        return {
            "config": asdict(model.cfg),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "fitting": state.to_dict(),
        }

    model.train()
    with _checkpoint_on_interrupt(ckpt, checkpoint):
        while state.step < steps and not state.stopped_early:
            for params in opt.param_groups:
                params["lr"] = learning_rate(tc, state.step, steps)
            opt.zero_grad(set_to_none=True)
            info = step(state.step)
            opt.step()
            state.step += 1
            due = state.step % tc.eval_every == 0 or state.step == steps or time.monotonic() > deadline
            stop = False
            if group is not None:  # one rank's clock or Ctrl-C decides for all of them
                due, stop = distributed.any_rank(group, [due, interrupt.requested()])
            if due:
                model.eval()
                held, late = distributed.on_main(group, lambda: (evaluate(), time.monotonic() > deadline))
                state.improve(model, held)
                model.train()
                state.stopped_early = state.bad >= tc.patience or late
                if ckpt is not None:
                    fsutil.save_torch(ckpt, checkpoint())
            if stop:
                raise KeyboardInterrupt
            if group is None:
                interrupt.check()  # a Ctrl-C deferred by Project.writing stops here, between two steps
            progress(task, state.step, steps, {**info, **{f"held {k}": v for k, v in state.held.items()}})
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    return state


# -- the β-VAE -----------------------------------------------------------------------------------


@torch.no_grad()
def vae_holdout(vae: BetaVAE, x: torch.Tensor, frame_channels: int) -> dict[str, float]:
    """Held-out loss (per image, at the mean latent) and the PSNR in dB of the reconstructed frames
    (the appearance planes, in [0, 1]) on model inputs x (N, C, H, W), on the model's device."""
    device = next(vae.parameters()).device
    loss, sq, n = 0.0, 0.0, 0
    for s in range(0, len(x), INFER_BATCH):
        xb = x[s : s + INFER_BATCH].to(device)
        recon, mu, logvar = vae(xb, sample=False)
        loss += float(vae_loss(xb, recon, mu, logvar, vae.cfg.beta)[0]) * len(xb)
        sq += float((recon[:, :frame_channels].clamp(0, 1) - xb[:, :frame_channels]).pow(2).mean()) * len(xb)
        n += len(xb)
    return {"loss": loss / n, "psnr": 10 * math.log10(1.0 / max(sq / n, 1e-10))}


def held_inputs(
    clips: list[np.ndarray], split: Split, motion: MotionPlane, most: int, timing: Timing = UNTIMED
) -> torch.Tensor:
    """Model inputs of up to `most` held-out frames, evenly spread (training frames if none is held out)."""
    index = split.index(held=True)
    return inputs(clips, spread(index if len(index) else split.train_index(), most), motion, timing)


def vae_budget(tc: TrainConfig, train_frames: int) -> int:
    """The β-VAE's optimiser steps for this many training frames: tc.vae_epochs passes over them,
    at most tc.vae_max_steps, and at least tc.vae_steps."""
    # one budget for any footage either starved long footage (Ped1's 680 s at 3000 steps) or, raised
    # for it, let short footage learn itself by heart and flag new normal footage of the same camera
    return passes(tc.vae_epochs, train_frames, tc.batch_size, tc.vae_steps, tc.vae_max_steps)


def update_budget(tc: TrainConfig, train_frames: int, share: float) -> int:
    """The β-VAE's optimiser steps to learn new footage from a trained model: tc.update_epochs passes
    over its training frames at the part of each batch they fill (the rest is replayed), at least
    UPDATE_MIN_STEPS and at most tc.vae_max_steps; tc.vae_steps where update_epochs is 0 (--steps)."""
    # on Ped1 -> night plaza, 1000 steps kept Ped1 and learned the plaza better than train's 3000 for
    # any footage (the plaza's 2 minutes learned by heart), in a third of the time
    if not tc.update_epochs:
        return tc.vae_steps
    per_step = batch_parts(tc.batch_size, share)[0]
    return passes(tc.update_epochs, train_frames, per_step, UPDATE_MIN_STEPS, tc.vae_max_steps)


def passes(epochs: float, frames: int, per_step: float, least: int, most: int) -> int:
    """Optimiser steps for `epochs` passes over `frames` frames, `per_step` of them in each step: at
    most `most`, and at least `least` (which wins where the two disagree, as --steps asks)."""
    return max(least, min(most, math.ceil(epochs * frames / per_step)))


def fit_vae(
    vae: BetaVAE,
    clips: list[np.ndarray],
    split: Split,
    cfg: ProjectConfig,
    device: torch.device,
    *,
    progress: Progress = no_progress,
    ckpt: Path | None = None,
    start: dict[str, Any] | None = None,
    extra: ExtraBatch | None = None,
    penalty: Penalty | None = None,
    extra_share: float = 0.0,
    steps: int | None = None,
    timing: Timing = UNTIMED,
    group: Group | None = None,
) -> dict[str, float]:
    """Train the VAE on the training frames of `clips` (continuing from checkpoint dict `start`).

    extra(n, generator) returns n replayed inputs: a batch of B holds round(B·(1−s)) new frames and
    replayed ones for the rest, so replayed samples make up s = `extra_share` of every batch.
    Returns the held-out loss and PSNR of the kept weights, and how many steps ran. In a distributed
    group (see distributed), each rank fits its part of every batch; only a single process replays.
    """
    tc, motion = cfg.train, cfg.frames.motion_plane()
    index = split.train_index()
    steps = vae_budget(tc, len(index)) if steps is None else steps
    n_new, n_extra = batch_parts(tc.batch_size, extra_share) if extra else (tc.batch_size, 0)
    if group is not None and (extra is not None or penalty is not None):
        raise VidanomError("an update (replay, EWC) trains in one process; run it without torchrun")
    held = held_inputs(clips, split, motion, VAL_FRAMES, timing)
    made = premade(clips, motion, timing, PREMADE_BYTES)
    # oneDNN's convolutions train faster channels-last on a CPU, as they score (inference.for_inference)
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    vae.to(device).to(memory_format=layout)
    net, share = distributed.wrap(vae, group, device), distributed.part(group, tc.batch_size)
    zones = Zones.of(cfg.score.mask, vae.cfg.height, vae.cfg.width, vae.cfg.downsample)  # no capacity spent there
    weight = None if zones is None else zones.pixels.to(device)

    def step(i: int) -> dict[str, float]:
        g = step_generator(tc.seed, 0, i, distributed.rank(group))
        rng = np.random.default_rng([tc.seed, 0, i])
        x = sample_batch(clips, index, n_new, motion, rng, timing, share, made)
        if n_extra and extra is not None:
            x = torch.cat([x, extra(n_extra, g)])
        x = x.to(device, memory_format=layout)
        recon, mu, logvar = net(x, generator=g)
        loss, rec, kl = vae_loss(x, recon, mu, logvar, vae.cfg.beta, weight)
        if penalty is not None:
            loss = loss + penalty(g)
        loss.backward()
        return {"loss": loss.item(), "recon": rec.item(), "kl": kl.item()}

    opt = torch.optim.Adam(vae.parameters(), lr=tc.lr)
    state = _fit(
        "vae",
        vae,
        opt=opt,
        tc=tc,
        steps=steps,
        step=step,
        evaluate=lambda: vae_holdout(vae, held, cfg.frames.channels),
        progress=progress,
        ckpt=ckpt,
        start=start,
        group=group,
    )
    return {**vae_holdout(vae, held, cfg.frames.channels), "steps": state.step}


# -- the LSTM-MDN --------------------------------------------------------------------------------


@torch.inference_mode()
def encode(
    vae: BetaVAE,
    frames: np.ndarray,
    motion: MotionPlane | int,
    device: torch.device,
    times: np.ndarray | None = None,
    ref_dt: float | None = None,
) -> torch.Tensor:
    """Mean latents of a whole clip, chunk by chunk: (n, H, W, C) uint8 → (cells, n, D) float32
    (motion planes scaled by the frames' times (n,) as the Scorer does, when both are given)."""
    context: torch.Tensor | None = None
    out, lag = [], as_plane(motion).lag
    gaps = gaps_of(times, np.arange(len(frames)), lag) if times is not None and ref_dt is not None else None
    for s in range(0, len(frames), INFER_BATCH):
        cur = torch.from_numpy(np.array(frames[s : s + INFER_BATCH]))
        chunk_gaps = None if gaps is None else gaps[s : s + len(cur)]
        mu, _ = vae.encode(to_input(cur, motion, context, chunk_gaps, ref_dt).to(device))
        out.append(mu.flatten(2).permute(2, 0, 1).cpu())
        if lag:  # the frames the next chunk's first differences need
            context = torch.from_numpy(np.array(frames[max(0, s + len(cur) - lag) : s + len(cur)]))
            if len(context) < lag:
                context = torch.cat([context[:1].expand(lag - len(context), *context.shape[1:]), context])
    return torch.cat(out, 1)


def window_batch(latents: list[torch.Tensor], starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of seq_len + 1 latents at rows (sequence, start) of `starts`, each with every cell:
    (B, T + 1, D) sequences and (B,) cell ids, cut to the shortest window."""
    seqs = [latents[i][:, t : t + seq_len + 1] for i, t in starts]
    t_min = min(z.shape[1] for z in seqs)
    return (torch.cat([z[:, :t_min] for z in seqs]), torch.cat([torch.arange(z.shape[0]) for z in seqs]))


def fast_starts(lengths: list[int], seq_len: int) -> dict[int, np.ndarray]:
    """Per skip of FAST_SKIPS, the (clip, start) rows of every window of seq_len · skip + 1 latents:
    those a made-up fast window can be cut from (none for a skip the clips are too short for)."""
    return {f: window_starts(lengths, seq_len * f) for f in FAST_SKIPS if max(lengths, default=0) > seq_len * f}


def fast_batch(
    latents: list[torch.Tensor], fast: dict[int, np.ndarray], seq_len: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """MDN_WINDOWS made-up fast windows, each of seq_len + 1 latents taken every `skip` (one skip per
    batch, drawn from those in `fast`): (B, T + 1, D) sequences and (B,) cell ids, as window_batch."""
    skip = int(rng.choice(list(fast)))
    rows = fast[skip][rng.integers(len(fast[skip]), size=MDN_WINDOWS)]
    z, cells = window_batch(latents, rows, seq_len * skip)
    return z[:, ::skip], cells


def fast_margin(fast_nll: torch.Tensor, normal_nll: torch.Tensor, margin: float) -> torch.Tensor:
    """The pseudo-anomaly loss: each made-up fast window's NLL (B,) per dimension should lie `margin`
    above the normal windows' (a scalar, not learned from): mean of relu(margin − the difference).

    Trained on normal windows alone, the LSTM-MDN learns a cell's dynamics well enough to predict a
    hurried sequence almost as well, from the hurried past it is given; made-up ones teach it what a
    speed it never saw is (the same idea as pseudo-anomalies for autoencoders, on the LSTM-MDN alone).
    """
    return torch.relu(margin - (fast_nll - normal_nll)).mean()


def _rank_share(
    mdn: LSTMMDN, batches: list[tuple[torch.Tensor, torch.Tensor]], group: Group | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """This rank's part of each batch of windows (B, T + 1, D) and cell ids (B,), cut to the shortest and
    put together: windows, cells, their neighbours' context (or None), taken before the split, which
    cuts through the grids that context needs whole, and how many of the windows the first batch gave."""
    t = min(z.shape[1] for z, _ in batches)
    parts = [distributed.part(group, len(z)) for z, _ in batches]
    z = torch.cat([z[p, :t] for (z, _), p in zip(batches, parts)])
    cells = torch.cat([c[p] for (_, c), p in zip(batches, parts)])
    first = len(batches[0][1][parts[0]])
    if mdn.cfg.context == "none":
        return z, cells, None, first
    with torch.no_grad():
        around = [mdn.context(w[:, : t - 1], change(w[:, : t - 1]))[p] for (w, _), p in zip(batches, parts)]
    return z, cells, torch.cat(around), first


@torch.no_grad()
def mdn_holdout(mdn: LSTMMDN, z: torch.Tensor, cells: torch.Tensor) -> dict[str, float]:
    """Mean NLL per latent dimension of held-out windows (B, T + 1, D)."""
    device = next(mdn.parameters()).device
    log_pi, mu, log_s, _ = mdn(z[:, :-1].to(device), cells.to(device))
    return {"loss": float(mdn_nll(z[:, 1:].to(device), log_pi, mu, log_s).mean()) / z.shape[-1]}


def fit_mdn(
    mdn: LSTMMDN,
    train: list[torch.Tensor],
    held: list[torch.Tensor],
    cfg: ProjectConfig,
    device: torch.device,
    *,
    progress: Progress = no_progress,
    ckpt: Path | None = None,
    start: dict[str, Any] | None = None,
    steps: int | None = None,
    group: Group | None = None,
) -> dict[str, float]:
    """Teach the LSTM-MDN to predict each cell's next latent. train, held: latent sequences
    (cells, n, D) of contiguous training and held-out frames (training ones stand in when none is held out).
    In a distributed group each rank fits its part of every batch's sequences."""
    tc = cfg.train
    steps = tc.mdn_steps if steps is None else steps
    starts = window_starts([z.shape[1] for z in train], tc.seq_len)
    held = held if any(z.shape[1] > 1 for z in held) else train
    held_starts = window_starts([z.shape[1] for z in held], tc.seq_len)
    held_batch = window_batch(held, spread(held_starts, VAL_WINDOWS), tc.seq_len)
    fast = fast_starts([z.shape[1] for z in train], tc.seq_len) if tc.mdn_fast_margin > 0 else {}
    mdn.to(device)
    opt = torch.optim.Adam(mdn.parameters(), lr=tc.lr)
    net = distributed.wrap(mdn, group, device)

    def step(i: int) -> dict[str, float]:
        rng = np.random.default_rng([tc.seed, 1, i])
        batches = [window_batch(train, starts[rng.integers(len(starts), size=MDN_WINDOWS)], tc.seq_len)]
        if fast:  # beside them, as many made-up fast windows, through the same forward pass
            batches.append(fast_batch(train, fast, tc.seq_len, np.random.default_rng([tc.seed, 3, i])))
        z, cells, around, normal = _rank_share(mdn, batches, group)
        z, cells = z.to(device), cells.to(device)
        log_pi, mu, log_s, _ = net(z[:, :-1], cells, None, None if around is None else around.to(device))
        nll = mdn_nll(z[:, 1:], log_pi, mu, log_s).mean(1) / z.shape[-1]  # per window and dimension
        loss = normal_nll = nll[:normal].mean()
        if fast:
            loss = loss + fast_margin(nll[normal:], normal_nll.detach(), tc.mdn_fast_margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mdn.parameters(), 1.0)
        return {"nll": normal_nll.item()}

    state = _fit(
        "mdn",
        mdn,
        opt=opt,
        tc=tc,
        steps=steps,
        step=step,
        evaluate=lambda: mdn_holdout(mdn, *held_batch),
        progress=progress,
        ckpt=ckpt,
        start=start,
        group=group,
    )
    return {"nll": mdn_holdout(mdn, *held_batch)["loss"], "steps": state.step}
