"""The project's configuration: dataclasses, and reading/writing the human-readable `vidanom.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .mdn import MDNConfig
from .vae import VAEConfig

SCHEMA_VERSION = 1  # bump when a saved project can no longer be read as it is
CONFIG_NAME = "vidanom.json"


@dataclass(frozen=True)
class FrameConfig:
    width: int = 64  # frames are resized to width × height before anything else
    height: int = 64
    channels: int = 1  # 1 = gray, 3 = RGB
    stride: int = 1  # keep every stride-th decoded frame
    motion_lag: int = 1  # the model also sees frame[t] - frame[t - lag]; 0 = appearance only
    decode_timeout: float = 60.0  # seconds of decoding (or of a blocked read) without a new frame: give up


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


@dataclass(frozen=True)
class TrainConfig:
    vae_epochs: int = 8
    mdn_epochs: int = 8
    batch_size: int = 64  # frames per VAE batch
    lr: float = 1e-3
    seq_len: int = 32  # frames per LSTM-MDN training sequence
    replay_distill: float = 1.0  # weight of replay's distillation terms (vidanom.replay.ReplayDistillation); 0 = off
    ewc_strength: float = 100.0  # λ of the EWC penalty, for 'update --strategy ewc'
    dream_temperature: float = 1.0  # of the LSTM-MDN's rollouts that replay old scenes on update
    val_fraction: float = 0.15  # the last part of every clip, held out for calibration
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    recon_planes: str = "motion"  # whose reconstruction error counts: "motion" (differences) or "all"
    patch: int = 16  # reconstruction error is averaged over patch × patch pixels...
    patch_stride: int = 8  # ...at windows this far apart...
    top_k: int = 5  # ...and the mean of the k worst patches counts
    weights: tuple[float, float, float] = (1.0, 0.25, 0.1)  # combined = Σ weight · standardised (recon, kl, nll)
    mdn_warmup: int = 8  # no MDN surprise for a clip's first frames: the LSTM has seen too little
    smooth: int = 5  # causal moving average over this many frames (1 = none)
    threshold_quantile: float = 0.99  # threshold = this quantile of the combined score on validation frames
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
        return VAEConfig(in_channels=self.in_channels, height=self.frames.height, width=self.frames.width,
                         **asdict(self.vae))

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
    if min(f.width, f.height, f.stride) < 1 or f.motion_lag < 0:
        raise ConfigError("frames.width, height and stride must be positive and motion_lag not negative")
    if not f.decode_timeout > 0:
        raise ConfigError("frames.decode_timeout must be a positive number of seconds")
    try:
        cfg.vae_config()
        from .vae import BetaVAE  # a cheap check of the architecture's divisibility rules
        BetaVAE(cfg.vae_config())
    except ValueError as exc:
        raise ConfigError(f"config does not describe a valid model: {exc}") from exc
    if not 0 < cfg.train.val_fraction < 1:
        raise ConfigError("train.val_fraction must lie between 0 and 1")
    sc = cfg.score
    if not (1 <= sc.patch <= min(f.width, f.height) and sc.patch_stride >= 1 and sc.top_k >= 1):
        raise ConfigError("score.patch must fit the frame, and score.patch_stride and top_k must be positive")
    if cfg.score.recon_planes not in ("motion", "all"):
        raise ConfigError("score.recon_planes must be 'motion' or 'all'")
    if not 0 < cfg.score.threshold_quantile < 1:
        raise ConfigError("score.threshold_quantile must lie between 0 and 1")


def to_dict(cfg: ProjectConfig) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(data: Any) -> ProjectConfig:
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ConfigError("config has no schema_version")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"project was written by a newer vidanom (schema {version} > {SCHEMA_VERSION}); "
                          "upgrade vidanom to open it")
    try:
        cfg = _build(ProjectConfig, data, "")
        validate(cfg)
    except TypeError as exc:  # e.g. "width": "wide" in a hand-edited file
        raise ConfigError(f"config has a value of the wrong type: {exc}") from exc
    return cfg


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


def with_overrides(cfg: ProjectConfig, **sections: dict[str, Any]) -> ProjectConfig:
    """A copy of cfg with some fields of some sections replaced, e.g. train={'vae_epochs': 2}."""
    return replace(cfg, **{name: replace(getattr(cfg, name), **vals) for name, vals in sections.items() if vals})
