"""The Calibration: what normal footage looks like to a trained model, one row per scene it has
learned, and its parts (PlaceStats, Scales). Records only: calibration.py computes them, scoring.py
scores frames against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from .direction import widen

# calibrations made before still_floor: stillness counted this many of its lower scales below its median
LEGACY_STILL_MARGIN = 4.0
# the components of a frame's score (scoring.components): all but "still" count where they are higher
# than on normal frames; "still" where it is lower: in a frozen picture nothing changes anywhere, and
# every cell is exactly what the LSTM-MDN expected most
COMPONENTS = ("recon", "kl", "nll", "still", "frozen", "direction")


@dataclass(frozen=True, kw_only=True)
class PlaceStats:
    """Per scene and place, what the training frames look like to the model (shrunk towards the
    frame-wide statistics as far as the footage is short): what components() z-scores against."""

    err_mean: torch.Tensor  # (S, P) per scene and patch position: mean error over the patch
    err_std: torch.Tensor
    kl_mean: torch.Tensor  # (S, cells)
    kl_std: torch.Tensor
    nll_mean: torch.Tensor  # (S, cells) zeros when there is no MDN
    nll_std: torch.Tensor
    # per scene and pixel, mean and std of the training frames (C·H·W of them, in [0, 1]): which scene a
    # frame shows is told by its pixels, which no update moves (None in calibrations made before)
    frame_mean: torch.Tensor | None = None  # (S, C·H·W)
    frame_std: torch.Tensor | None = None
    # per scene, its usual picture (see frozen.background): the per-pixel median and spread of its training
    # frames (S, C·H·W) and the median change from one frame to the next (S,); None in calibrations made before
    bg_median: torch.Tensor | None = None
    bg_spread: torch.Tensor | None = None
    bg_quiet: torch.Tensor | None = None
    # per scene and latent cell, the log-probability of each direction and speed class of motion on its
    # training frames (S, cells, direction.BINS·SPEEDS; see direction.DirectionCounts), and per scene the
    # usual speed the classes are measured by (S,): NaN where a calibration of 0.6.0-0.6.1 had directions
    # alone (widened as they load); None in calibrations made before
    dir_logp: torch.Tensor | None = None
    dir_speed: torch.Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class Scales:
    """Per scene, what the held-out frames' components are measured in: what standardise() uses."""

    # (S, 6) median of recon, kl, nll, still (smoothed) on the held-out frames; for frozen and direction,
    # the value they exceed by the threshold's rule
    comp_mean: torch.Tensor
    # (S, 6) their spread above the median (frozen: a frame interval); inf where the scene has none: it adds nothing
    comp_std: torch.Tensor
    comp_low: torch.Tensor  # (S, 6) their spread below the median; for still, its unit
    still_floor: torch.Tensor  # (S,) stillness counts below this: set on the held-out frames by the threshold's rule


@dataclass(frozen=True, kw_only=True)
class Calibration(PlaceStats, Scales):
    """What normal footage looks like to the model, one row per scene it has learned: its place
    statistics, the scales of its components, and its threshold. Built whole once its parts are
    known (calibration.calibrate, carry.after_update, from_dict), never changed.

    Every scene keeps its own position-wise statistics: a frame is scored against the scene it shows,
    so learning a night scene does not redefine "normal" for the day scene (standardising both
    against pooled statistics cost the day scene most of its AUROC).
    """

    thresholds: torch.Tensor  # (S,) each scene's threshold on its held-out frames
    has_mdn: bool
    scenes: list[str]
    false_alarms: torch.Tensor | None = None  # (S,) the share of new normal frames expected over the threshold
    frame_interval: float | None = None  # the usual seconds between training frames: motion is scaled by it

    @classmethod
    def of(cls, places: PlaceStats, scales: Scales, **rest: Any) -> Calibration:
        """The calibration of these parts, with its thresholds, has_mdn, scenes (and the rest)."""
        parts = {f.name: getattr(part, f.name) for part in (places, scales) for f in fields(part)}
        return cls(**parts, **rest)

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
        if d.get("comp_low") is None:  # made before the two sides had their own scales
            d = {**d, "comp_low": d["comp_std"].clone()}
        missing = len(COMPONENTS) - d["comp_mean"].shape[-1]
        if missing > 0:  # made before stillness, frozen or direction were components: they add nothing
            pad = {"comp_mean": 0.0, "comp_std": math.inf, "comp_low": math.inf}
            d = {**d, **{k: torch.cat([d[k], torch.full((len(d[k]), missing), v)], 1) for k, v in pad.items()}}
        if d.get("dir_logp") is not None and d.get("dir_speed") is None:  # directions alone: any speed as likely
            d = {**d, "dir_logp": widen(d["dir_logp"]), "dir_speed": torch.full((len(d["dir_logp"]),), math.nan)}
        if d.get("still_floor") is None:  # made before: the same rule as then
            d = {**d, "still_floor": d["comp_mean"][:, 3] - LEGACY_STILL_MARGIN * d["comp_low"][:, 3]}
        return cls(**d)
