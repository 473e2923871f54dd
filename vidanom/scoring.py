"""Per-frame anomaly scores against a model's calibration on normal footage, and anomalous segments.

Each frame gets six components (COMPONENTS), all local; the first three are standardised against
what the model does on normal footage, place by place:
  recon  the mean of the top_k largest patch errors, each z-scored against the error of the same
         patch position on training frames, of the motion planes only by default (see components)
  kl     the worst latent cell of the per-cell z-scored KL
  nll    the mean of the top_k worst cells of the z-scored LSTM-MDN negative log-likelihood of this
         frame's latent given the clip so far (NaN for a clip's first `warmup` frames: too little past)
  still  log(1 + the top_k cells' surprise over the mixture's most likely prediction): near zero
         where nothing changes as predicted, as in a frozen picture (NaN in the warm-up, as nll)
  frozen the seconds the frame's longest-frozen place has differed from the scene's usual picture
         without changing by even the camera's noise (vidanom.frozen; no model learns it)
  direction  the top_k places' surprise at the directions things move in there, given the directions
         the training frames moved in (vidanom.direction; no model learns it either)
The combined score (combine) is Σ weight · term over the causally smoothed components (Smoother:
frozen, a run's length, as it is): recon, kl and nll count by how far they lie above their median
on held-out normal frames, in their spread above it; frozen by the frame intervals it lies beyond the
runs there (calibration.run_scale); direction by how far it lies beyond the held-out frames' by the
threshold's rule (calibration.rule_offset); still by how far it lies below the stillest held-out
frames (see standardise). The threshold is set on the held-out frames' combined scores
(calibration.choose_threshold), and one function, anomalous, compares a score with it. All statistics
are kept per scene, and a frame is scored against the scene it shows: the one whose training frames
its pixels lie closest to (see scene_of).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import ProjectConfig, ScoreConfig, ScoreWeights
from .data import MotionPlane, as_plane, to_input
from .direction import DirectionSurprise
from .frozen import FrozenRuns
from .mdn import LSTMMDN, State, mdn_nll
from .normality import COMPONENTS
from .vae import BetaVAE, error_map, kl_map, patch_means
from .zones import Zones

if TYPE_CHECKING:
    from .normality import Calibration, PlaceStats, Scales

# stillness (a log) counts in these units below the stillest held-out normal frames (Calibration.still_floor):
# a fixed unit, not the held-out frames' spread, which a short-trained LSTM-MDN widens (Avenue, seed 1: 2.4-fold,
# and the freeze went unflagged). Over three seeds 0.25 flagged up to 0.8% of Ped1 4 -> 30, 0.3 none; 0.35
# caught less of the frozen stretches
STILL_UNIT = 0.3
STILL, FROZEN, DIRECTION = (COMPONENTS.index(c) for c in ("still", "frozen", "direction"))


@dataclass
class Maps:
    """Raw local statistics of n frames."""

    err: torch.Tensor  # (n, H, W) squared reconstruction error
    kl: torch.Tensor  # (n, rows·cols) KL per latent cell
    nll: torch.Tensor  # (n, rows·cols) MDN NLL per cell; NaN where there is no past (or no MDN)
    excess: torch.Tensor | None = None  # (n, rows·cols) the NLL over that of the predicted mixture's mode
    frame: torch.Tensor | None = None  # (n, C·H·W) the frame planes in [0, 1]: which scene it shows
    recon: torch.Tensor | None = None  # (n, C_in, H, W) the VAE's reconstruction, if Scorer.keep_recon
    zones: Zones | None = None  # the zones to ignore (err is already weighted by them; see components)
    dt: torch.Tensor | None = None  # (n,) seconds since the frame before (0 for a clip's first)


def make_scorer(
    vae: BetaVAE, mdn: LSTMMDN | None, cfg: ProjectConfig, device: torch.device, ref_dt: float | None = None
) -> Scorer:
    """A Scorer set up as the project's config says; ref_dt: the model's usual seconds between frames
    (Calibration.frame_interval), by which motion planes are scaled."""
    motion_only = cfg.score.recon_planes == "motion" and cfg.frames.motion_lag > 0
    scorer = Scorer(
        vae, mdn, cfg.frames.motion_plane(), device, cfg.score.mdn_warmup, cfg.frames.channels if motion_only else 0
    )
    scorer.ref_dt = ref_dt
    scorer.zones = Zones.of(cfg.score.mask, vae.cfg.height, vae.cfg.width, vae.cfg.downsample)
    return scorer


class Scorer:
    """Runs the VAE (and LSTM-MDN) over a stream of frame chunks of one clip, carrying state."""

    def __init__(
        self,
        vae: BetaVAE,
        mdn: LSTMMDN | None,
        motion: MotionPlane | int,
        device: torch.device,
        warmup: int = 8,
        recon_from: int = 0,
    ) -> None:
        self.vae, self.mdn, self.device = vae.eval(), mdn.eval() if mdn else None, device
        self.motion = as_plane(motion)
        self.lag = self.motion.lag
        self.recon_from = recon_from  # first input plane whose reconstruction error counts
        self.warmup = warmup  # the LSTM's first predictions, from an empty state, are not yet informed
        self._seen = 0  # frames of the clip already scored
        self._context: torch.Tensor | None = None  # the last `lag` frames of the previous chunk
        self._state: State | None = None  # LSTM state per cell
        self._pred: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # the next frame's mixture, per cell
        self.keep_recon = False  # hand out the reconstructions too (for pictures of them)
        # the usual seconds between frames (the training footage's median): with it and the frames' times,
        # motion planes are scaled by the time they span (data.motion_scale); None: never scaled
        self.ref_dt: float | None = None
        self._times: torch.Tensor | None = None  # the last max(lag, 1) times of the previous chunk
        self.zones: Zones | None = None  # what happens inside these is ignored (see zones)

    @property
    def interval(self) -> float:
        """Seconds between two frames that come without times: the usual interval, or one frame's
        worth, 1, where that is unknown too."""
        return self.ref_dt or 1.0

    def _spans(self, times: np.ndarray | None, n: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(n,) seconds from each frame to the frame `lag` before it (None without times or lag), and
        (n,) to the frame just before it (0 for a clip's first; without times, the usual interval, or
        one frame's worth, 1, where that is unknown too)."""
        if times is None:
            self._times = None
            dt = torch.full((n,), self.interval)
            dt[: 1 if self._seen == 0 else 0] = 0.0
            return None, dt
        t = torch.as_tensor(np.asarray(times, np.float64))
        keep = max(self.lag, 1)  # the times of the frames before this chunk that either span needs
        span = torch.cat([self._times if self._times is not None else t[:1].expand(keep), t])
        self._times = span[-keep:].clone()
        gaps = t - span[keep - self.lag : keep - self.lag + n] if self.lag else None
        return gaps, (t - span[keep - 1 : keep - 1 + n]).float()

    def reset(self) -> None:
        """Start a new clip."""
        self._seen, self._context, self._state, self._pred, self._times = 0, None, None, None, None

    @torch.inference_mode()
    def maps(self, frames: np.ndarray, times: np.ndarray | None = None) -> Maps:
        """frames: (n, H, W, C) uint8, the next frames of the clip; times: their (n,) times in seconds
        (see ref_dt) → their Maps."""
        cur = torch.from_numpy(np.array(frames, copy=True))
        gaps, dt = self._spans(times, len(cur))
        ref = None if self.ref_dt is None else self.lag * self.ref_dt  # the usual span of a difference
        x = to_input(cur, self.motion, self._context, gaps, ref).to(self.device)
        if self.lag:
            self._context = (
                torch.cat([self._context, cur])[-self.lag :]
                if self._context is not None
                else torch.cat([cur[:1].expand(self.lag, *cur.shape[1:]), cur])[-self.lag :]
            )
        recon, mu, logvar = self.vae(x, sample=False)
        err = error_map(x[:, self.recon_from :], recon[:, self.recon_from :])
        if self.zones is not None:
            err = self.zones.errors(err)
        kl = kl_map(mu, logvar).flatten(1)
        nll, excess = torch.full_like(kl, float("nan")), torch.full_like(kl, float("nan"))
        if self.mdn is not None:
            nll, excess = self._surprise(mu)
            nll[: max(0, self.warmup - self._seen)] = float("nan")
            excess[: max(0, self.warmup - self._seen)] = float("nan")
        self._seen += len(frames)
        return Maps(
            err.cpu(),
            kl.cpu(),
            nll.cpu(),
            excess.cpu(),
            x[:, : cur.shape[-1]].flatten(1).cpu(),
            recon.cpu() if self.keep_recon else None,
            self.zones,
            dt,
        )

    def _surprise(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu: (n, D, rows, cols) → (n, cells) NLL of each frame's latent given the frames before, and
        its excess over the NLL of the predicted mixture's mode (0 where the latent is the prediction)."""
        assert self.mdn is not None
        n = mu.shape[0]
        z = mu.flatten(2).permute(2, 0, 1)  # (cells, n, D): one sequence per cell
        cells = torch.arange(z.shape[0], device=z.device)
        log_pi, m, log_s, self._state = self.mdn(z, cells, self._state)
        # each frame's prediction: the one carried from the chunk before (if any), then this chunk's but the last
        pred = [p[:, :-1] for p in (log_pi, m, log_s)]
        if self._pred is not None:
            pred = [torch.cat([q.unsqueeze(1), p], 1) for q, p in zip(self._pred, pred)]
        target = z if self._pred is not None else z[:, 1:]
        nll, excess = (torch.full((z.shape[0], n), float("nan"), device=z.device) for _ in range(2))
        if target.shape[1]:
            values = mdn_nll(target, *pred)
            nll[:, n - target.shape[1] :] = values
            excess[:, n - target.shape[1] :] = values - mdn_nll(mixture_mode(*pred), *pred)
        self._pred = (log_pi[:, -1], m[:, -1], log_s[:, -1])
        return nll.T, excess.T


def mixture_mode(log_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """The mean of each mixture's most likely component: (..., K), (..., K, D), (..., K, D) → (..., D)."""
    best = log_pi.argmax(-1)[..., None, None].expand(*log_pi.shape[:-1], 1, mu.shape[-1])
    return mu.gather(-2, best)[..., 0, :]


def top_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest values along the last axis: (..., P) → (...)."""
    return x.topk(min(k, x.shape[-1]), dim=-1).values.mean(-1)


def components(
    maps: Maps,
    cal: PlaceStats,
    sc: ScoreConfig,
    frozen: torch.Tensor | None = None,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maps of n frames → (n, S, 6) components recon, kl, nll, still, frozen, direction against each
    of S scenes (frozen and direction: the (n, S) values PixelTerms measured of these frames; NaN
    without them).

    recon, kl, nll: the worst places of the frame (the top_k patches, the worst cell, the top_k
    cells), each place against its own statistics. still: log(1 + the mean of the top_k cells'
    surprise over what the LSTM-MDN expected most), the same for every scene: near zero only where
    nothing changes as predicted anywhere, as in a frozen picture; in log units because a busy
    scene and a quiet one differ by orders of magnitude above that, and should count alike.
    nll and still are NaN where the LSTM-MDN has no prediction yet.
    """
    patches = patch_means(maps.err, sc.patch, sc.patch_stride)[:, None]  # (n, 1, P)
    recon = top_mean((patches - cal.err_mean) / cal.err_std, sc.top_k)
    kl_z = (maps.kl[:, None] - cal.kl_mean) / cal.kl_std
    nll_z = (maps.nll[:, None] - cal.nll_mean) / cal.nll_std  # NaN stays NaN
    excess = maps.excess if maps.excess is not None else torch.full_like(maps.nll, float("nan"))
    excess = excess.clamp_min(0.0)
    if maps.zones is not None:  # the zones to ignore, before the worst places are taken (err: in Scorer.maps)
        kl_z, nll_z, excess = maps.zones.places(kl_z), maps.zones.places(nll_z), maps.zones.surprise(excess)
    kl = kl_z.amax(2)
    nll = top_mean(nll_z, sc.top_k)
    still = top_mean(excess, sc.top_k).log1p()[:, None].expand_as(recon)
    stopped, moves = (torch.full_like(recon, math.nan) if v is None else v.to(recon.dtype) for v in (frozen, direction))
    return torch.stack([recon, kl, nll, still, stopped, moves], 2)


class PixelTerms:
    """The components no model learns, frozen and direction, of a stream of one clip's Maps (a new
    one for a new clip): they read the frame planes, and carry the frames before from chunk to chunk."""

    def __init__(self, cal: PlaceStats, sc: ScoreConfig, interval: float | None) -> None:
        self.frozen = FrozenRuns(cal)
        # the flow is not free (README, "Speed"): not measured where it would not count
        on = sc.weights.direction > 0
        self.direction = DirectionSurprise(cal.dir_logp if on else None, cal.dir_speed, sc.top_k, interval)

    def __call__(self, maps: Maps) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The next chunk's Maps → frozen (n, S) and direction (n, S), or None where not measured."""
        size = maps.err.shape[1:]
        return (
            self.frozen(maps.frame, maps.dt, size, maps.zones),
            self.direction(maps.frame, maps.dt, size, maps.zones),
        )


def standardise(comp: torch.Tensor, cal: Scales) -> torch.Tensor:
    """(n, S, 6) components → (n, S, 6) terms: how far recon, kl, nll, frozen and direction lie above
    normal (0 below it), in units of their spread above the median on held-out normal frames (frozen:
    beyond their runs, in frame intervals; direction: beyond them by the threshold's rule), and how
    far still lies below the scene's still_floor, in its comp_low (STILL_UNIT). A missing (NaN)
    component gives 0.
    """
    terms = (comp - cal.comp_mean) / cal.comp_std
    terms[..., STILL] = (cal.still_floor - comp[..., STILL]) / cal.comp_low[..., STILL]
    return terms.clamp_min(0.0).nan_to_num(0.0)


def counted(cal: Scales, row: int, weights: ScoreWeights) -> list[str]:
    """The components that count in scene `row`'s score: a weight above 0 and a finite scale (a
    calibration of an earlier release kept only recon of the scenes an update did not learn)."""
    scale = cal.comp_std[row].clone()
    scale[STILL] = cal.comp_low[row, STILL]
    return [c for c, w, s in zip(COMPONENTS, weights.ordered(COMPONENTS), scale.tolist()) if w > 0 and np.isfinite(s)]


def combine(smoothed: torch.Tensor, cal: Scales, weights: ScoreWeights) -> torch.Tensor:
    """(n, S, 6) smoothed components → (n, S) combined score: Σ weight · term (see standardise), each
    component's weight by its name."""
    return standardise(smoothed, cal) @ torch.tensor(weights.ordered(COMPONENTS), dtype=smoothed.dtype)


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


def pick_scene(
    comp: torch.Tensor, combined: torch.Tensor, scene: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame, the components (n, 6), combined score (n,) and index (n,) of its scene: the one
    given, or without one the scene that explains the frame best (the lowest score).

    (n, S, 6), (n, S), (n,) or None. Telling the scene by its pixels (scene_of) is the better rule: a
    scene whose errors vary widely otherwise "explains" a quiet scene's frames, anomalies included.
    """
    if scene is None:
        score, scene = combined.min(1)
    else:
        score = combined.gather(1, scene[:, None])[:, 0]
    return comp[torch.arange(len(comp)), scene], score, scene


class CausalMean:
    """Moving average over the last `window` values along the first axis, fed chunk by chunk (never
    looks ahead); NaN values are left out of the mean (NaN where the window holds no value)."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.tail: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        full = x if self.tail is None else torch.cat([self.tail, x])
        known = ~torch.isnan(full)
        zero = torch.zeros((1, *full.shape[1:]), dtype=torch.float64)
        csum = torch.cat([zero, full.double().nan_to_num(0.0).cumsum(0)])
        count = torch.cat([zero, known.double().cumsum(0)])
        skip = 0 if self.tail is None else len(self.tail)
        ends = torch.arange(skip + 1, len(full) + 1)
        starts = (ends - self.window).clamp_min(0)
        out = (csum[ends] - csum[starts]) / (count[ends] - count[starts])  # 0/0: NaN
        self.tail = full[len(full) - min(len(full), self.window - 1) :]
        return out.to(x.dtype)


class Smoother:
    """The components' causal mean over `window` frames (CausalMean), fed chunk by chunk, except
    `frozen`'s: a run's length already gathers its evidence over time, and a mean of it only delays
    its rise and holds it up for `window` − 1 frames after the run ends."""

    def __init__(self, window: int) -> None:
        self.mean = CausalMean(window)

    def __call__(self, comp: torch.Tensor) -> torch.Tensor:
        """(n, S, 6) components → (n, S, 6)."""
        out = self.mean(comp)
        out[..., FROZEN] = comp[..., FROZEN]
        return out


def anomalous(scores: np.ndarray, threshold: float) -> np.ndarray:
    """(n,) bool: the frames whose (n,) combined scores flag them anomalous. The one place that
    decides it: everything else reads the verdicts scoring made (a CSV's `anomalous`, FrameScore)."""
    return np.asarray(scores) > threshold


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


def iter_scores(
    scorer: Scorer, chunks: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray]], cal: Calibration, sc: ScoreConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stream a clip's chunks (frames, or (frames, times) as video.iter_timed_chunks gives) → per
    chunk: components (n, 6) and index (n,) of the scene each frame is scored against, and the
    combined score (n,) of the causally smoothed components."""
    smoother, pixels = Smoother(sc.smooth), PixelTerms(cal, sc, scorer.interval)
    for chunk in chunks:
        maps = scorer.maps(*chunk) if isinstance(chunk, tuple) else scorer.maps(chunk)
        comp = components(maps, cal, sc, *pixels(maps))
        combined = combine(smoother(comp), cal, sc.weights)
        comp, score, scene = pick_scene(comp, combined, scene_of(maps, cal))
        yield comp, scene, score
