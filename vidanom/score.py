"""Per-frame anomaly scores, their calibration on normal data, and anomalous segments.

Each frame gets three components, all local and all standardised against what the model does on
normal footage, position by position:
  recon  the mean of the top_k largest patch errors, each z-scored against the error of the same
         patch position on training frames (patches 16×16, 8 apart), of the motion planes only by
         default: on Ped1 the appearance plane's error scores 0.65 AUROC, the motion planes' 0.78;
         top-5 patches instead of the single worst add 0.02
  kl     the worst latent cell of the per-cell z-scored KL
  nll    the worst latent cell of the z-scored LSTM-MDN negative log-likelihood of this frame's
         latent given the clip so far (NaN for a clip's first `warmup` frames: too little past)
The combined score is Σ weight · (component − mean) / std with mean and std taken on held-out
normal frames, causally smoothed; the threshold is a quantile of it on those same frames. All of
these statistics are kept per scene, and a frame is scored against the scene it shows: the one
whose training frames its pixels lie closest to (see scene_of).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .config import ProjectConfig, ScoreConfig
from .data import to_input
from .mdn import LSTMMDN, mdn_nll
from .vae import BetaVAE, error_map, kl_map, patch_means

COMPONENTS = ("recon", "kl", "nll")


@dataclass
class Maps:
    """Raw local statistics of n frames."""

    err: torch.Tensor  # (n, H, W) squared reconstruction error
    kl: torch.Tensor  # (n, rows·cols) KL per latent cell
    nll: torch.Tensor  # (n, rows·cols) MDN NLL per cell; NaN where there is no past (or no MDN)
    frame: torch.Tensor | None = None  # (n, C·H·W) the frame planes in [0, 1]: which scene it shows
    recon: torch.Tensor | None = None  # (n, C_in, H, W) the VAE's reconstruction, if Scorer.keep_recon


class RunningStats:
    """Mean and std of maps over frames, accumulated chunk by chunk in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x[~torch.isnan(x.flatten(1)).any(1)].double()
        if len(x) == 0:
            return
        s1, s2 = x.sum(0), x.pow(2).sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += len(x)

    def result(self, floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0 or self.s1 is None or self.s2 is None:
            raise ValueError("no data to take statistics of")
        mean = self.s1 / self.n
        var = (self.s2 / self.n - mean.pow(2)).clamp_min(0)
        # the floor keeps a pixel that never changed in training from dividing by zero
        std = var.sqrt().clamp_min(max(floor, float(var.sqrt().mean()) * 0.05))
        return mean.float(), std.float()


@dataclass
class Calibration:
    """What normal footage looks like to the model, one row per scene it has learned.

    Every scene keeps its own position-wise statistics: a frame is scored against each scene and the
    scene that explains it best counts, so learning a night scene does not redefine "normal" for
    the day scene (standardising both against pooled statistics cost the day scene most of its AUROC).
    """

    err_mean: torch.Tensor  # (S, P) per scene and patch position: mean error over the patch
    err_std: torch.Tensor
    kl_mean: torch.Tensor  # (S, cells)
    kl_std: torch.Tensor
    nll_mean: torch.Tensor  # (S, cells) zeros when there is no MDN
    nll_std: torch.Tensor
    comp_mean: torch.Tensor  # (S, 3) of recon, kl, nll on the scene's validation frames
    comp_std: torch.Tensor  # (S, 3) inf for a component the scene has no statistics of: it adds nothing
    thresholds: torch.Tensor  # (S,) quantile of the scene's combined score on its validation frames
    has_mdn: bool
    scenes: list[str]
    # per scene and pixel, mean and std of the training frames (C·H·W of them, in [0, 1]): which scene a
    # frame shows is told by its pixels, which no update moves (None in calibrations made before)
    frame_mean: torch.Tensor | None = None  # (S, C·H·W)
    frame_std: torch.Tensor | None = None

    @property
    def threshold(self) -> float:
        """One threshold for every scene: no scene's normal frames flag more often than it chose."""
        return float(self.thresholds.max())

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        if "threshold" in d:  # written before statistics were kept per scene: one scene, 1-D tensors
            threshold = torch.tensor([float(d["threshold"])])
            d = {k: v[None] if isinstance(v, torch.Tensor) else v for k, v in d.items() if k != "threshold"}
            d.update(thresholds=threshold, scenes=["default"])
        return cls(**d)

    def merged(self, old: Calibration, keep: list[str]) -> Calibration:
        """These statistics plus the stored ones of the old scenes in `keep` that were not learned anew.

        Old scenes keep only their reconstruction statistics. Their KL and NLL statistics belonged
        to the encoder and LSTM-MDN before this update: both move when a new scene is learned, and on
        Ped1 → night plaza the stale KL statistics put old-scene z-scores near 60 instead of 2 and
        turned scene A's AUROC from 0.84 to 0.17. Dreamed clips, too unlike real frames in KL
        (z near 170), cannot recalibrate them either; the motion error's statistics stay valid
        (scene A 0.85 after the update).
        """
        rows = [i for i, s in enumerate(old.scenes) if s in keep and s not in self.scenes]
        if not rows:
            return self
        carried = old.comp_std[rows].clone()
        carried[:, 1:] = float("inf")  # kl and nll: standardised to zero, they add nothing
        cat = {k: torch.cat([carried if k == "comp_std" else old.__dict__[k][rows], v])
               for k, v in self.__dict__.items()
               if isinstance(v, torch.Tensor) and isinstance(old.__dict__[k], torch.Tensor)}
        return Calibration(**cat, has_mdn=self.has_mdn, scenes=[old.scenes[i] for i in rows] + self.scenes)


def make_scorer(vae: BetaVAE, mdn: LSTMMDN | None, cfg: ProjectConfig, device: torch.device) -> Scorer:
    """A Scorer set up as the project's config says."""
    motion_only = cfg.score.recon_planes == "motion" and cfg.frames.motion_lag > 0
    return Scorer(vae, mdn, cfg.frames.motion_lag, device, cfg.score.mdn_warmup,
                  cfg.frames.channels if motion_only else 0)


class Scorer:
    """Runs the VAE (and LSTM-MDN) over a stream of frame chunks of one clip, carrying state."""

    def __init__(self, vae: BetaVAE, mdn: LSTMMDN | None, lag: int, device: torch.device, warmup: int = 8,
                 recon_from: int = 0) -> None:
        self.vae, self.mdn, self.lag, self.device = vae.eval(), mdn.eval() if mdn else None, lag, device
        self.recon_from = recon_from  # first input plane whose reconstruction error counts
        self.warmup = warmup  # the LSTM's first predictions, from an empty state, are not yet informed
        self._seen = 0  # frames of the clip already scored
        self._context: torch.Tensor | None = None  # the last `lag` frames of the previous chunk
        self._state = None  # LSTM state per cell
        self._pred = None  # mixture predicted for the next frame, per cell
        self.keep_recon = False  # hand out the reconstructions too (for pictures of them)
        # the usual seconds between frames (the training footage's median): with it and the frames' times,
        # motion planes are scaled by the time they span (data.motion_scale); None: never scaled
        self.ref_dt: float | None = None
        self._times: torch.Tensor | None = None  # the last `lag` times of the previous chunk

    def _gaps(self, times: np.ndarray | None, n: int) -> torch.Tensor | None:
        """(n,) seconds from each frame to the frame `lag` before it (None without times or lag)."""
        if times is None or not self.lag:
            self._times = None
            return None
        t = torch.as_tensor(np.asarray(times, np.float64))
        span = torch.cat([self._times if self._times is not None else t[:1].expand(self.lag), t])
        self._times = span[-self.lag:].clone()
        return t - span[:n]

    @torch.inference_mode()
    def maps(self, frames: np.ndarray, times: np.ndarray | None = None) -> Maps:
        """frames: (n, H, W, C) uint8, the next frames of the clip; times: their (n,) times in seconds
        (see ref_dt) → their Maps."""
        cur = torch.from_numpy(np.array(frames, copy=True))
        gaps = self._gaps(times, len(cur))
        ref = None if self.ref_dt is None else self.lag * self.ref_dt  # the usual span of a difference
        x = to_input(cur, self.lag, self._context, gaps, ref).to(self.device)
        if self.lag:
            self._context = torch.cat([self._context, cur])[-self.lag:] if self._context is not None \
                else torch.cat([cur[:1].expand(self.lag, *cur.shape[1:]), cur])[-self.lag:]
        recon, mu, logvar = self.vae(x, sample=False)
        err = error_map(x[:, self.recon_from:], recon[:, self.recon_from:])
        kl = kl_map(mu, logvar).flatten(1)
        nll = torch.full_like(kl, float("nan"))
        if self.mdn is not None:
            nll = self._surprise(mu)
            nll[: max(0, self.warmup - self._seen)] = float("nan")
        self._seen += len(frames)
        return Maps(err.cpu(), kl.cpu(), nll.cpu(), x[:, :cur.shape[-1]].flatten(1).cpu(),
                    recon.cpu() if self.keep_recon else None)

    def _surprise(self, mu: torch.Tensor) -> torch.Tensor:
        """mu: (n, D, rows, cols) → (n, cells) NLL of each frame's latent given the frames before."""
        n, d = mu.shape[:2]
        z = mu.flatten(2).permute(2, 0, 1)  # (cells, n, D): one sequence per cell
        cells = torch.arange(z.shape[0], device=z.device)
        log_pi, m, log_s, self._state = self.mdn(z, cells, self._state)
        out = torch.full((z.shape[0], n), float("nan"), device=z.device)
        if self._pred is not None:
            out[:, 0] = mdn_nll(z[:, 0], *self._pred)
        if n > 1:
            out[:, 1:] = mdn_nll(z[:, 1:], log_pi[:, :-1], m[:, :-1], log_s[:, :-1])
        self._pred = (log_pi[:, -1], m[:, -1], log_s[:, -1])
        return out.T


def top_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest values along the last axis: (..., P) → (...)."""
    return x.topk(min(k, x.shape[-1]), dim=-1).values.mean(-1)


def components(maps: Maps, cal: Calibration, sc: ScoreConfig) -> torch.Tensor:
    """Maps of n frames → (n, S, 3) local components recon, kl, nll against each of S scenes."""
    patches = patch_means(maps.err, sc.patch, sc.patch_stride)[:, None]  # (n, 1, P)
    recon = top_mean((patches - cal.err_mean) / cal.err_std, sc.top_k)
    kl = ((maps.kl[:, None] - cal.kl_mean) / cal.kl_std).amax(2)
    nll = ((maps.nll[:, None] - cal.nll_mean) / cal.nll_std).amax(2)  # NaN stays NaN
    return torch.stack([recon, kl, nll], 2)


def combine(comp: torch.Tensor, cal: Calibration, weights: tuple[float, ...]) -> torch.Tensor:
    """(n, S, 3) → (n, S) weighted sum of standardised components; a missing (NaN) one adds nothing."""
    z = ((comp - cal.comp_mean) / cal.comp_std).nan_to_num(0.0)
    return z @ torch.tensor(weights, dtype=z.dtype)


def scene_of(maps: Maps, cal: Calibration) -> torch.Tensor | None:
    """(n,) index of the scene each frame shows: the one whose training frames it lies closest to,
    pixel by pixel in units of that scene's own spread. None without frame statistics (or with
    one scene).

    Pixels rather than latents: after an update the old scenes' latents are known only through
    replayed samples, and on Ped1 real scene-A frames encoded nearer the new scene's latent mean
    than the replayed ones' (1.2 against 1.9).
    """
    if cal.frame_mean is None or cal.frame_std is None or maps.frame is None or len(cal.scenes) < 2:
        return None
    dist = torch.stack([((maps.frame - m) / s).pow(2).mean(1) for m, s in zip(cal.frame_mean, cal.frame_std)])
    return dist.argmin(0)


def pick_scene(comp: torch.Tensor, combined: torch.Tensor, scene: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame, the components (n, 3), combined score (n,) and index (n,) of its scene: the one
    given, or without one the scene that explains the frame best (the lowest score).

    (n, S, 3), (n, S), (n,) or None. Telling the scene by its pixels (scene_of) is the better rule: a
    scene whose errors vary widely otherwise "explains" a quiet scene's frames, anomalies included.
    """
    if scene is None:
        score, scene = combined.min(1)
    else:
        score = combined.gather(1, scene[:, None])[:, 0]
    return comp[torch.arange(len(comp)), scene], score, scene


class CausalMean:
    """Moving average over the last `window` values, fed chunk by chunk (never looks ahead)."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.tail = torch.zeros(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        full = torch.cat([self.tail, x])
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), full.double().cumsum(0)])
        ends = torch.arange(len(self.tail) + 1, len(full) + 1)
        starts = (ends - self.window).clamp_min(0)
        out = (csum[ends] - csum[starts]) / (ends - starts)
        self.tail = full[-(self.window - 1):] if self.window > 1 else torch.zeros(0)
        return out.float()


@dataclass(frozen=True)
class Segment:
    start: int  # first anomalous frame
    end: int  # one past the last (Python slice convention)
    peak_frame: int
    peak_score: float


def segments(flags: np.ndarray, scores: np.ndarray, min_len: int) -> list[Segment]:
    """Runs of flagged frames at least min_len long."""
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    out = []
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= min_len:
            peak = int(start + np.argmax(scores[start:end]))
            out.append(Segment(int(start), int(end), peak, float(scores[peak])))
    return out


def iter_scores(scorer: Scorer, chunks: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray]], cal: Calibration,
                sc: ScoreConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stream a clip's chunks (frames, or (frames, times) as video.iter_timed_chunks gives) → per
    chunk: components (n, 3) and index (n,) of the scene that explains each frame best, and the
    smoothed combined score (n,)."""
    smoother = CausalMean(sc.smooth)
    for chunk in chunks:
        maps = scorer.maps(*chunk) if isinstance(chunk, tuple) else scorer.maps(chunk)
        comp = components(maps, cal, sc)
        comp, score, scene = pick_scene(comp, combine(comp, cal, sc.weights), scene_of(maps, cal))
        yield comp, scene, smoother(score)
