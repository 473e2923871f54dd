"""What normal footage looks like to a trained model, and the threshold that comes of it.

Two sets of normal frames are used, never the same ones:
- the *training* frames give the statistics of each place in the frame (patch errors, each latent
  cell's KL and surprise), pulled towards the statistics of the whole frame as far as the footage
  is short (`shrink`): after 40 s of a campus camera, a place nobody crossed has no idea of its
  own spread, and a passer-by there scored 70 times the threshold;
- the *held-out* frames (whole clips, or time blocks spread over the footage; see data.Split) give
  the scale of each score component and the threshold, and an estimate of the false-alarm rate to
  expect, block by block on blocks the threshold was not set on (`choose_threshold`); that estimate
  is what `train` promises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.distributions import Binomial

from . import interrupt
from .config import ProjectConfig
from .data import UNTIMED, Split, Timing
from .direction import DirectionCounts
from .errors import VidanomError
from .frozen import background
from .mdn import LSTMMDN
from .normality import Calibration, PlaceStats, Scales
from .scoring import (
    DIRECTION,
    FROZEN,
    STILL,
    STILL_UNIT,
    Maps,
    PixelTerms,
    Scorer,
    Smoother,
    combine,
    components,
    make_scorer,
)
from .progress import Progress, no_progress
from .vae import BetaVAE, patch_means

MIN_SECONDS = 60.0  # less normal footage than this cannot support a promised false-alarm rate
MIN_BLOCKS = 4  # the held-out frames are cut into at least this many blocks to estimate it
# how sure the threshold is to flag at most the target share of new normal frames (see confident_rank):
# held-out frames are few (Avenue: 250), and at the plain quantile new footage of the same camera was
# flagged more often than the target (Avenue: 0.9%, 2.3% and 4.4% over three seeds against 1%)
CONFIDENCE = 0.9
# the least spread of a component: each is made of z-scores, whose spread a few seconds of held-out
# footage (a handful of nearly alike frames) can put near zero, and then a small fraction of one place's
# z-score would count as a whole unit; the floor was chosen across cameras (README's ablation table)
MIN_SCALE = 0.4
# the least unit of `direction` (pixels a frame times nats, per pixel): only where held-out footage barely
# moves does it bind, and then a passer-by in any direction counts for many units, as it should
MIN_DIRECTION_UNIT = 1e-3


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


def shrink(mean: torch.Tensor, std: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-place statistics (..., P) pulled towards the frame-wide ones: weight 1 keeps them, weight 0
    gives every place the statistics of all places pooled (their mean, and the variance of a value
    drawn at a random place: the mean of std² + (mean − pooled mean)²). Variances are mixed, not stds."""
    pooled_mean = mean.mean(-1, keepdim=True)
    pooled_var = (std.pow(2) + (mean - pooled_mean).pow(2)).mean(-1, keepdim=True)
    mixed_var = weight * std.pow(2) + (1.0 - weight) * pooled_var
    return weight * mean + (1.0 - weight) * pooled_mean, mixed_var.sqrt()


def shrink_weight(seconds: float, prior_seconds: float) -> float:
    """How much the per-place statistics count after `seconds` of footage: seconds / (seconds + prior)."""
    return seconds / (seconds + prior_seconds) if seconds + prior_seconds > 0 else 1.0


# -- the threshold -------------------------------------------------------------------------------


def confident_rank(n: int, target: float) -> int:
    """How many of n held-out normal scores may lie above the threshold: the most, j, for which the
    (j+1)-th largest is at or above the scores' true (1 − target) quantile with probability CONFIDENCE,
    whatever their distribution (the count of n scores above that quantile is binomial(n, target)). 0,
    the largest score, where not even that is so sure (fewer than about 230 scores for a 1% target)."""
    counts = torch.arange(n + 1, dtype=torch.float64)
    cdf = Binomial(n, torch.tensor(target, dtype=torch.float64)).log_prob(counts).exp().cumsum(0)
    sure = torch.nonzero(cdf <= 1.0 - CONFIDENCE)
    return int(sure[-1]) if len(sure) else 0


def upper_threshold(scores: torch.Tensor, target: float) -> float:
    """The (confident_rank + 1)-th largest of the held-out scores (n,)."""
    return float(scores.double().sort(descending=True).values[confident_rank(len(scores), target)])


def choose_threshold(blocks: list[torch.Tensor], target: float) -> tuple[float, float]:
    """(threshold, expected false-alarm rate) from the combined scores of held-out blocks.

    The threshold is the upper_threshold of all held-out scores. The rate to expect on new footage is
    estimated the way new footage meets it: the threshold set so on all blocks but one, counted on that
    one, for every block in turn (weighted by their lengths). When the blocks differ (a crowded clip
    among quiet ones), it exceeds the target, and says by how much.
    """
    if len(blocks) < 2:
        raise ValueError("choose_threshold needs at least two held-out blocks")
    sizes = np.array([len(b) for b in blocks], float)
    rates = []
    for i, block in enumerate(blocks):
        rest = torch.cat([b for j, b in enumerate(blocks) if j != i])
        rates.append(float((block.double() > upper_threshold(rest, target)).double().mean()))
    return upper_threshold(torch.cat(blocks), target), float(np.dot(rates, sizes) / sizes.sum())


def held_blocks(split: Split) -> list[tuple[int, int, int]]:
    """The held-out runs (clip, start, end), cut into at least MIN_BLOCKS blocks for choose_threshold."""
    runs = split.runs(held=True)
    total = sum(b - a for _, a, b in runs)
    if len(runs) >= MIN_BLOCKS or total < MIN_BLOCKS:
        return runs
    size = -(-total // MIN_BLOCKS)
    return [(c, s, min(s + size, b)) for c, a, b in runs for s in range(a, b, size)]


def check_footage(footage: Footage, holdout: float, block_seconds: float) -> None:
    """Refuse (VidanomError) footage too short to train on and still hold out frames for the
    threshold: it must give at least two held-out blocks and a training run of two frames."""
    if _enough(footage.split):
        return
    fps = footage.fps[0] if footage.fps else 25.0
    need = next(n for n in range(2, 1_000_000) if _enough(Split.blocks([n], [fps], holdout, block_seconds)))
    frames = sum(footage.split.lengths)
    raise VidanomError(
        f"only {frames} frame(s) of normal footage ({footage.seconds:.1f} s): training needs at least {need} "
        f"frames ({need / fps:.1f} s at {fps:g} fps) to hold some out for the threshold, and a few minutes "
        "to promise a false-alarm rate; train on longer footage"
    )


def _enough(split: Split) -> bool:
    return len(held_blocks(split)) >= 2 and any(b - a >= 2 for _, a, b in split.runs())


# -- calibrating ---------------------------------------------------------------------------------


def _clip_maps(scorer: Scorer, footage: Footage, clip: int, batch: int = 256) -> Iterator[tuple[int, Maps]]:
    scorer.reset()
    frames, times = footage.clips[clip], footage.timing.times
    for s in range(0, len(frames), batch):
        maps = scorer.maps(np.asarray(frames[s : s + batch]), None if times is None else times[clip][s : s + batch])
        footage.done += len(maps.err)
        interrupt.check()
        footage.progress("calibrate", footage.done, footage.total, {})
        yield s, maps


@dataclass
class Footage:
    """The normal clips one scene is calibrated on: frames, frame rates and their split."""

    clips: list[np.ndarray]  # (n, H, W, C) uint8 each, memory-mapped
    fps: list[float]
    split: Split
    timing: Timing = UNTIMED  # the frames' times and the usual interval between them
    warnings: list[str] = field(default_factory=list)
    progress: Progress = no_progress  # told of the frames calibrate has gone through
    done: int = 0
    # the seconds of training footage these frames stand for, where they are a sample of it (kept.py):
    # the place statistics shrink by the footage's length, not the sample's
    represents: float | None = None

    @property
    def total(self) -> int:
        """Frames calibrate goes through: clips with training frames once, clips with held-out ones again."""
        return sum(
            len(c) * (int(self.split.mask(i).any()) + int((~self.split.mask(i)).any()))
            for i, c in enumerate(self.clips)
        )

    @property
    def training_seconds(self) -> float:
        if self.represents is not None:
            return self.represents
        return sum((b - a) / self.fps[c] for c, a, b in self.split.runs())

    @property
    def seconds(self) -> float:
        """Seconds of footage, each clip once: one held out once more (accepting._judged) is the same array."""
        once = {id(c): len(c) / f for c, f in zip(self.clips, self.fps)}
        return sum(once.values())


def place_statistics(scorer: Scorer, footage: Footage, cfg: ProjectConfig) -> PlaceStats:
    """One scene's statistics of each place on its training frames, shrunk by the footage's length."""
    err, kl, nll, pixels = RunningStats(), RunningStats(), RunningStats(), RunningStats()
    sc, directions = cfg.score, None
    for clip in range(len(footage.clips)):
        train = ~footage.split.mask(clip)
        if not train.any():
            continue
        for s, m in _clip_maps(scorer, footage, clip):
            keep = torch.from_numpy(train[s : s + len(m.err)])
            err.add(patch_means(m.err[keep], sc.patch, sc.patch_stride))
            kl.add(m.kl[keep])
            nll.add(m.nll[keep])
            if m.frame is not None:
                pixels.add(m.frame[keep])
                if directions is None:  # of the latent grid's cells, whose number the maps tell
                    directions = DirectionCounts(m.kl.shape[1], scorer.interval)
                if s == 0:  # a clip's first frame has no frame before it
                    directions.clip()
                directions.add(m.frame, m.dt, m.err.shape[1:], keep)
    w = shrink_weight(footage.training_seconds, sc.shrink_seconds)
    (em, es), (km, ks) = shrink(*err.result(), w), shrink(*kl.result(), w)
    nm, ns = shrink(*nll.result(), w) if nll.n else (torch.zeros_like(km), torch.ones_like(ks))
    fm, fs = pixels.result()
    bm, bs, bq = background(footage.clips, footage.split.train_index())
    return PlaceStats(
        err_mean=em[None],
        err_std=es[None],
        kl_mean=km[None],
        kl_std=ks[None],
        nll_mean=nm[None],
        nll_std=ns[None],
        frame_mean=fm[None],
        frame_std=fs[None],
        bg_median=bm[None],
        bg_spread=bs[None],
        bg_quiet=bq[None],
        dir_logp=None if directions is None else directions.log_probabilities(w)[None],
        dir_speed=None if directions is None else torch.tensor([directions.usual_speed()]),
    )


def held_scores(
    scorer: Scorer, footage: Footage, places: PlaceStats, cfg: ProjectConfig
) -> tuple[Scales, list[torch.Tensor]]:
    """The components' medians and scales (frozen's: run_scale; direction's offset: rule_offset) and the
    still floor (the threshold's rule, from below) on the held-out frames, and the held-out blocks'
    combined scores in those scales."""
    smoothed: dict[int, torch.Tensor] = {}
    for clip in sorted({c for c, _, _ in footage.split.runs(held=True)}):
        smoother, pixels = Smoother(cfg.score.smooth), PixelTerms(places, cfg.score, scorer.interval)
        smoothed[clip] = torch.cat(
            [smoother(components(m, places, cfg.score, *pixels(m))) for _, m in _clip_maps(scorer, footage, clip)]
        )[:, 0]
    held = torch.cat([smoothed[c][a:b] for c, a, b in footage.split.runs(held=True)])
    floors = torch.full((held.shape[1],), MIN_SCALE)
    floors[DIRECTION] = MIN_DIRECTION_UNIT  # not a z-score: its own unit
    median, low, high = split_scales(held, floors)
    if scale := run_scale(held[:, FROZEN], scorer.interval, cfg.score.false_alarms):
        median[FROZEN], high[FROZEN] = scale
    # direction counts only where the directions are rarer than any normal footage showed: measured from
    # its median, as recon is, it added its noise to every frame (README, "How a default is chosen")
    if (offset := rule_offset(held[:, DIRECTION], cfg.score.false_alarms)) is not None:
        median[DIRECTION] = offset
    still = held[:, STILL][~held[:, STILL].isnan()]
    still_floor = torch.zeros(1)  # without an LSTM-MDN stillness stays NaN and adds nothing
    if len(still):  # the threshold's rule, from below
        still_floor = torch.tensor([-upper_threshold(-still, cfg.score.false_alarms)])
        low[STILL] = STILL_UNIT
    scales = Scales(comp_mean=median[None], comp_std=high[None], comp_low=low[None], still_floor=still_floor)
    combined = {c: combine(v[:, None], scales, cfg.score.weights)[:, 0] for c, v in smoothed.items()}
    return scales, [combined[c][a:b] for c, a, b in held_blocks(footage.split)]


def run_scale(runs: torch.Tensor, interval: float, target: float) -> tuple[float, float] | None:
    """`frozen`'s offset and unit from its (N,) values on held-out normal frames: the run that new
    normal footage exceeds at most `target` of the time, by the threshold's rule (upper_threshold:
    their longest where they are few), and one frame interval, a run's least step. None where they
    have none (NaN: no usual picture). A run counts only beyond what normal footage does: the median of
    frames nearly all at 0 says nothing, normal footage holds a place still for a frame or two now and
    then, and a unit of seconds fixed for every camera hid a freeze's first frames (README, "How a
    default is chosen")."""
    offset = rule_offset(runs, target)
    return None if offset is None else (offset, interval)


def rule_offset(values: torch.Tensor, target: float) -> float | None:
    """Of (N,) values on held-out normal frames, the one that new normal footage exceeds at most
    `target` of the time, by the threshold's rule (upper_threshold: their largest where they are
    few); None where they are all NaN (not measured)."""
    values = values[~values.isnan()]
    return upper_threshold(values, target) if len(values) else None


def split_scales(
    x: torch.Tensor, floors: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column of x (N, K), over its non-NaN rows: the median and the root mean square distance
    of the values below and above it (a two-piece normal), at least the column's floor (floors (K,);
    MIN_SCALE for all by default). (0, inf, inf) for a column with no values (no MDN), so that it
    counts for nothing."""
    k = x.shape[1]
    median, low, high = torch.zeros(k), torch.full((k,), math.inf), torch.full((k,), math.inf)
    for j in range(k):
        col = x[:, j][~torch.isnan(x[:, j])].double()
        if len(col) < 2:
            continue
        m = col.median()
        below, above = col[col < m] - m, col[col > m] - m
        median[j] = m
        floor = MIN_SCALE if floors is None else float(floors[j])
        low[j] = max(float(below.pow(2).mean().sqrt()) if len(below) else 0.0, floor)
        high[j] = max(float(above.pow(2).mean().sqrt()) if len(above) else 0.0, floor)
    return median, low, high


def calibrate(
    vae: BetaVAE, mdn: LSTMMDN | None, footage: Footage, cfg: ProjectConfig, device: torch.device, scene: str
) -> Calibration:
    """One scene's calibration: place statistics on the training frames, component scales and the
    threshold on the held-out ones. Appends to footage.warnings what the user should know about
    how far the promised false-alarm rate can be trusted."""
    from .inference import for_inference

    scorer = make_scorer(for_inference(vae, device), mdn, cfg, device, footage.timing.ref_dt)
    places = place_statistics(scorer, footage, cfg)
    scales, blocks = held_scores(scorer, footage, places, cfg)
    target = cfg.score.false_alarms
    threshold, rate = choose_threshold(blocks, target)
    footage.warnings += trust_warnings(footage.seconds, sum(len(b) for b in blocks), rate, target)
    return Calibration.of(
        places,
        scales,
        thresholds=torch.tensor([threshold]),
        has_mdn=mdn is not None,
        scenes=[scene],
        false_alarms=torch.tensor([rate]),
        frame_interval=footage.timing.ref_dt,
    )


def threshold_sureness(held: int, target: float) -> float:
    """How sure a threshold set on `held` held-out frames is to flag at most `target` of new normal
    frames: CONFIDENCE once there are enough of them, else how sure their largest score is to lie
    above the target quantile (see confident_rank)."""
    return min(CONFIDENCE, 1.0 - (1.0 - target) ** held)


def trust_warnings(seconds: float, held: int, rate: float, target: float) -> list[str]:
    """What the user should know about how far the promised false-alarm rate can be trusted, after
    calibrating on `seconds` of normal footage with `held` frames held out, expecting `rate`."""
    warnings = []
    if seconds < MIN_SECONDS:
        warnings.append(
            f"only {seconds:.0f} s of normal footage: too little to promise "
            f"a false-alarm rate; train on a few minutes or more"
        )
    sure = threshold_sureness(held, target)  # below CONFIDENCE, confident_rank is 0: the largest score
    if sure < CONFIDENCE:
        warnings.append(
            f"the threshold is the highest of only {held} held-out normal frames: {100 * sure:.0f}% sure, "
            f"not {100 * CONFIDENCE:.0f}%, to flag at most {100 * target:g}% of new normal frames; "
            "train on longer footage"
        )
    if rate > 2 * target:
        warnings.append(
            f"the held-out normal footage varies more than the threshold allows for: "
            f"{100 * rate:.1f}% of new normal frames may be flagged, not {100 * target:g}%; "
            "train on longer or more varied normal footage (busy and quiet times)"
        )
    return warnings
