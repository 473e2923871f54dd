"""The project's configuration: dataclasses, and reading/writing the human-readable `vidanom.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .data import MOTION_KINDS, MotionPlane
from .errors import ConfigError
from .mdn import MDNConfig
from .vae import VAEConfig

SCHEMA_VERSION = 2  # bump when a saved project can no longer be read as it is (and migrate in _migrate)
CONFIG_NAME = "vidanom.json"
GRID = 8  # the frame size is rounded to a multiple of this (the β-VAE's downsampling of its default depth)


@dataclass(frozen=True)
class FrameConfig:
    # frames are resized to width × height; width 0: from the first clip's aspect ratio. Squashed to a
    # square, a 16:9 camera flagged fewer new normal frames (Avenue: 0.9% and 2.3% for seeds 0 and 1, against
    # 3.3% and 10.9% at 112×64) and Ped1 scored alike (AUROC 0.802 against 0.811), in a third of the time
    width: int = 64
    height: int = 64
    channels: int = 1  # 1 = gray, 3 = RGB
    stride: int = 1  # keep every stride-th decoded frame
    motion_lag: int = 1  # the model also sees the motion between frame[t] and frame[t - lag]; 0 = appearance only
    # the motion plane: "magnitude" (local mean |difference|), "difference" (signed) or "speed" (see MotionPlane)
    motion: str = "magnitude"
    motion_gain: float = 8.0  # the motion plane is multiplied by this (differences are small beside the frame)
    motion_blur: int = 5  # "magnitude" and "speed" are averaged over this many pixels square (odd)
    decode_timeout: float = 60.0  # seconds of decoding (or of a blocked read) without a new frame: give up

    def resolved(self, source_width: int, source_height: int) -> FrameConfig:
        """This config with a width of 0 replaced by the source's aspect ratio at this height, rounded to
        a multiple of GRID: a 16:9 camera is not squashed into a square, where a distant person
        shrinks to a pixel or two across."""
        if self.width:
            return self
        width = max(GRID, round(self.height * source_width / max(1, source_height) / GRID) * GRID)
        return replace(self, width=width)

    def motion_plane(self) -> MotionPlane:
        return MotionPlane(self.motion_lag, self.motion, self.motion_gain, self.motion_blur)


@dataclass(frozen=True)
class VAEOptions:
    # stride-2 convolutions. On Ped1 (16, 32, 64) scored 0.816 combined at 1.5× the cost, (8, 16, 32) 0.807:
    # the narrow last layer weakened the latents (kl 0.58 against 0.62)
    hidden: tuple[int, ...] = (8, 16, 64)
    latent_channels: int = 4  # latent dimensions per grid cell
    beta: float = 0.1  # weight of KL against the summed squared error
    coords: bool = True  # let the model know where in the frame a pixel is


@dataclass(frozen=True)
class MDNOptions:
    hidden: int = 32  # LSTM units (64 cost twice the time and scored Ped1 alike)
    mixtures: int = 5  # Gaussians in the predicted mixture
    cell_embedding: int = 8  # size of the learned embedding of a latent cell's position
    delta: bool = True  # the LSTM also reads each latent's change since the frame before
    residual: bool = True  # the mixture's means are offsets from the current latent


@dataclass(frozen=True)
class TrainConfig:
    # the β-VAE's budget of optimiser steps: vae_epochs passes over its training frames, capped at
    # vae_max_steps (long footage still trains in minutes), and at least vae_steps (short footage converges)
    vae_steps: int = 3000
    vae_epochs: float = 100.0
    vae_max_steps: int = 12000
    mdn_steps: int = 2000  # optimiser steps of the LSTM-MDN at most
    eval_every: int = 100  # steps between evaluations on the held-out frames (and checkpoints)
    patience: int = 6  # evaluations without a better held-out loss before a stage stops early
    max_minutes: float = 0.0  # also stop each stage after this long (0: no time limit)
    batch_size: int = 64  # frames per VAE batch
    lr: float = 1e-3  # Adam's learning rate, decayed to a tenth along a cosine over the step budget
    seq_len: int = 32  # frames per LSTM-MDN training sequence
    holdout: float = 0.2  # share of the footage held out: whole clips when there are 5 or more, else time blocks
    block_seconds: float = 5.0  # length of a held-out time block
    replay_distill: float = 1.0  # weight of replay's distillation terms (vidanom.replay.ReplayDistillation); 0 = off
    ewc_strength: float = 100.0  # λ of the EWC penalty, for 'update --strategy ewc'
    dream_temperature: float = 1.0  # of the LSTM-MDN's rollouts that replay old scenes on update
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    recon_planes: str = "motion"  # whose reconstruction error counts: "motion" (differences) or "all"
    patch: int = 16  # reconstruction error is averaged over patch × patch pixels...
    patch_stride: int = 8  # ...at windows this far apart...
    top_k: int = 5  # ...and the mean of the k worst patches counts
    weights: tuple[float, ...] = (1.0, 1.0, 0.25, 2.0)  # combined = Σ weight · term (recon, kl, nll, still)
    shrink_seconds: float = (
        300.0  # place-by-place statistics count as much as the frame-wide ones after this much footage
    )
    mdn_warmup: int = 8  # no MDN surprise for a clip's first frames: the LSTM has seen too little
    smooth: int = 5  # causal moving average over this many frames (1 = none)
    false_alarms: float = 0.01  # the share of normal frames the threshold may flag, estimated on held-out footage
    min_segment: int = 3  # shorter runs of anomalous frames are not reported as segments
    batch_size: int = 128  # frames per inference batch


@dataclass(frozen=True)
class ProjectConfig:
    schema_version: int = SCHEMA_VERSION
    frames: FrameConfig = field(default_factory=FrameConfig)
    vae: VAEOptions = field(default_factory=VAEOptions)
    mdn: MDNOptions = field(default_factory=MDNOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    @property
    def in_channels(self) -> int:
        return self.frames.channels * (2 if self.frames.motion_lag > 0 else 1)

    def vae_config(self) -> VAEConfig:
        return VAEConfig(
            in_channels=self.in_channels, height=self.frames.height, width=self.frames.width, **asdict(self.vae)
        )

    def mdn_config(self) -> MDNConfig:
        rows, cols = self.vae_config().grid
        return MDNConfig(latent_dim=self.vae.latent_channels, cells=rows * cols, **asdict(self.mdn))


def _build(cls: type, data: Any, where: str) -> Any:
    """Rebuild a (nested) dataclass from JSON data, refusing unknown keys with a clear message."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be an object")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown config key(s) in '{where}': {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if hasattr(default, "__dataclass_fields__"):
            value = _build(type(default), value, f"{where}.{name}" if where else name)
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def validate(cfg: ProjectConfig) -> None:
    f = cfg.frames
    if f.channels not in (1, 3):
        raise ConfigError(f"frames.channels must be 1 (gray) or 3 (RGB), not {f.channels}")
    if min(f.height, f.stride) < 1 or f.width < 0 or f.motion_lag < 0:
        raise ConfigError(
            "frames.height and stride must be positive, width positive or 0 (from the video) "
            "and motion_lag not negative"
        )
    if not f.decode_timeout > 0:
        raise ConfigError("frames.decode_timeout must be a positive number of seconds")
    if f.motion not in MOTION_KINDS or not f.motion_gain > 0 or f.motion_blur < 1 or f.motion_blur % 2 == 0:
        raise ConfigError(
            f"frames.motion must be one of {', '.join(MOTION_KINDS)}, motion_gain positive and "
            "motion_blur an odd number of pixels"
        )
    try:
        from .vae import BetaVAE  # a cheap check of the architecture's divisibility rules

        BetaVAE(replace(cfg, frames=f.resolved(f.height, f.height)).vae_config())
    except ValueError as exc:
        raise ConfigError(f"config does not describe a valid model: {exc}") from exc
    t = cfg.train
    if not 0 < t.holdout < 1 or not t.block_seconds > 0:
        raise ConfigError("train.holdout must lie between 0 and 1 and train.block_seconds be positive")
    if min(t.vae_steps, t.mdn_steps, t.eval_every, t.patience, t.batch_size, t.seq_len) < 1:
        raise ConfigError("train.vae_steps, mdn_steps, eval_every, patience, batch_size and seq_len must be positive")
    if t.vae_max_steps < 1 or t.vae_epochs < 0:
        raise ConfigError("train.vae_max_steps must be positive and train.vae_epochs not negative")
    sc = cfg.score
    if not (1 <= sc.patch <= min(f.width or f.height, f.height) and sc.patch_stride >= 1 and sc.top_k >= 1):
        raise ConfigError("score.patch must fit the frame, and score.patch_stride and top_k must be positive")
    if sc.recon_planes not in ("motion", "all"):
        raise ConfigError("score.recon_planes must be 'motion' or 'all'")
    if len(sc.weights) != 4:
        raise ConfigError("score.weights must hold 4 numbers: recon, kl, nll, still")
    if not 0 < sc.false_alarms < 0.5 or sc.shrink_seconds < 0:
        raise ConfigError("score.false_alarms must lie between 0 and 0.5, score.shrink_seconds not be negative")


def to_dict(cfg: ProjectConfig) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(data: Any) -> ProjectConfig:
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ConfigError("config has no schema_version")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"project was written by a newer vidanom (schema {version} > {SCHEMA_VERSION}); upgrade vidanom to open it"
        )
    try:
        cfg = _build(ProjectConfig, _migrate(data), "")
        validate(cfg)
    except TypeError as exc:  # e.g. "width": "wide" in a hand-edited file
        raise ConfigError(f"config has a value of the wrong type: {exc}") from exc
    return cfg


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A config of an older schema, in today's terms (what was dropped had no counterpart)."""
    data = json.loads(json.dumps(data))
    if data.get("schema_version") == 1:
        frames, score = data.setdefault("frames", {}), data.setdefault("score", {})
        train = data.get("train", {})
        # what its models were trained on, where today's defaults differ
        frames.update(motion="difference", motion_gain=1.0, motion_blur=1)
        frames.setdefault("width", 64)
        data.setdefault("mdn", {}).update(delta=False, residual=False)
        for key in ("vae_epochs", "mdn_epochs", "val_fraction"):  # epochs became a budget of steps
            train.pop(key, None)
        # no weight for stillness: its models' scores stay as they were
        score["weights"] = [*score.get("weights", (1.0, 0.25, 0.1)), 0.0]
        if "threshold_quantile" in score:
            score["false_alarms"] = round(1.0 - score.pop("threshold_quantile"), 6)
        data["schema_version"] = 2
    return data


def read_config(path: Path) -> ProjectConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return from_dict(data)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """['vae.beta=0.3', ...] → {'vae': {'beta': 0.3}}, for with_overrides (values are Python literals)."""
    import ast

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        out.setdefault(section, {})[name] = ast.literal_eval(value)
    return out


def fixed_steps(steps: int) -> dict[str, Any]:
    """The train overrides that give each stage a budget of this many optimiser steps (early stopping
    may end it sooner), whatever the footage's length: `with_overrides(cfg, train=fixed_steps(n))`."""
    return {"vae_steps": steps, "vae_epochs": 0.0, "mdn_steps": steps}


def with_overrides(cfg: ProjectConfig, **sections: dict[str, Any]) -> ProjectConfig:
    """A copy of cfg with some fields of some sections replaced, e.g. train={'vae_steps': 2}; checked as
    a config read from a file is (ConfigError)."""
    out = replace(cfg, **{name: replace(getattr(cfg, name), **vals) for name, vals in sections.items() if vals})
    validate(out)
    return out
