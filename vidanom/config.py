"""The project's configuration: dataclasses, and reading/writing the human-readable `vidanom.json`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .data import MOTION_KINDS, MotionPlane
from .errors import ConfigError
from .mdn import MDNConfig
from .vae import VAEConfig

SCHEMA_VERSION = 3  # bump when a saved project can no longer be read as it is (and migrate in _migrate)
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

    def rate(self, nominal: float) -> float:
        """The frame rate every output reports (CSV and summary, ClipScores, watch): of the frames
        kept, the file's nominal rate over the stride."""
        return nominal / self.stride


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
    context: str = "delta"  # of its 8 neighbours on the grid it reads: "none", "delta" (changes), "both" (and latents)


@dataclass(frozen=True)
class TrainConfig:
    # the β-VAE's budget of optimiser steps: vae_epochs passes over its training frames, capped at
    # vae_max_steps (long footage still trains in minutes), and at least vae_steps (short footage converges)
    vae_steps: int = 3000
    vae_epochs: float = 100.0
    vae_max_steps: int = 12000
    mdn_steps: int = 2000  # optimiser steps of the LSTM-MDN at most
    # the LSTM-MDN learns to find made-up fast windows (every 2nd-4th latent) this many nats per latent
    # dimension less likely than normal ones (fitting.fast_margin); 0: off
    mdn_fast_margin: float = 0.5
    # an update's budget: passes over its new footage at the part of each batch it fills (fitting.update_budget),
    # the LSTM-MDN as many steps (at most mdn_steps); 0: vae_steps (as --steps sets it)
    update_epochs: float = 30.0
    eval_every: int = 100  # steps between evaluations on the held-out frames (and checkpoints)
    patience: int = 6  # evaluations without a better held-out loss before a stage stops early
    max_minutes: float = 0.0  # also stop each stage after this long (0: no time limit)
    batch_size: int = 64  # frames per VAE batch
    lr: float = 1e-3  # Adam's learning rate, decayed to a tenth along a cosine over the step budget
    seq_len: int = 32  # frames per LSTM-MDN training sequence
    holdout: float = 0.2  # share of the footage held out: whole clips when there are 5 or more, else time blocks
    block_seconds: float = 5.0  # length of a held-out time block
    replay_distill: float = 1.0  # weight of replay's distillation (vidanom.replay.ReplayDistillation); 0 = off
    # its encoder half (the new posterior on a replayed frame against the old one's) weighs this times as
    # much as the decoder half: at 1 replay fell short of joint training on the MNIST digits, at 0 the old
    # video scene lost most (README, "Learning new scenes")
    replay_distill_encoder: float = 0.3
    ewc_strength: float = 100.0  # λ of the EWC penalty, for 'update --strategy ewc'
    dream_temperature: float = 1.0  # of the LSTM-MDN's rollouts that replay old scenes on update
    # frames of each scene's footage kept with the model, to calibrate the scene anew after later updates
    # (vidanom.kept); 0: none, and an update carries old scenes' calibrations through the models' drift
    keep_frames: int = 0
    seed: int = 0


@dataclass(frozen=True)
class ScoreWeights:
    """How much each component counts in the combined score, by its name (scoring.COMPONENTS)."""

    recon: float = 1.0
    kl: float = 1.0
    nll: float = 0.25
    still: float = 2.0
    frozen: float = 2.0
    # across cameras 0.5 kept the mean of the made anomalies (none of which is a direction) and scored the demo's
    # walker across the path; at 1 the demo rose to 0.94 and Avenue's new footage flagged 1 point more
    direction: float = 0.5

    def ordered(self, names: tuple[str, ...]) -> tuple[float, ...]:
        """The weights of the named components, in that order."""
        return tuple(float(getattr(self, name)) for name in names)


@dataclass(frozen=True)
class MaskConfig:
    """Zones of the picture to ignore (see zones): polygons in the camera's own pixels, of a frame of
    width × height (the camera's resolution when they were drawn; frames of another size are scaled)."""

    width: int = 0  # 0 while there is no zone
    height: int = 0
    polygons: tuple[tuple[tuple[float, float], ...], ...] = ()  # each at least three (x, y) points


@dataclass(frozen=True)
class ScoreConfig:
    recon_planes: str = "motion"  # whose reconstruction error counts: "motion" (differences) or "all"
    patch: int = 16  # reconstruction error is averaged over patch × patch pixels...
    patch_stride: int = 8  # ...at windows this far apart...
    top_k: int = 5  # ...and the mean of the k worst patches counts
    weights: ScoreWeights = field(default_factory=ScoreWeights)  # combined = Σ weight · term
    shrink_seconds: float = (
        300.0  # place-by-place statistics count as much as the frame-wide ones after this much footage
    )
    mdn_warmup: int = 8  # no MDN surprise for a clip's first frames: the LSTM has seen too little
    smooth: int = 5  # causal moving average over this many frames (1 = none)
    false_alarms: float = 0.01  # the share of normal frames the threshold may flag, estimated on held-out footage
    min_segment: int = 3  # shorter runs of anomalous frames are not reported as segments
    batch_size: int = 128  # frames per inference batch
    mask: MaskConfig = field(default_factory=MaskConfig)  # what happens inside these zones raises no score


@dataclass(frozen=True)
class AcceptConfig:
    """How `vidanom accept` folds a stretch a person says is normal into the model (see accept)."""

    margin: float = 1.5  # seconds of footage kept either side of the stretch
    share: float = 0.5  # of the scene's frames in each batch, the share of accepted frames
    epochs: float = 30.0  # passes over the accepted frames: the update's step budget grows with them...
    min_steps: int = 200  # ...from at least this many optimiser steps...
    max_steps: int = 2000  # ...to at most this many (of the β-VAE, and of the LSTM-MDN up to train.mdn_steps)


@dataclass(frozen=True)
class ProjectConfig:
    schema_version: int = SCHEMA_VERSION
    frames: FrameConfig = field(default_factory=FrameConfig)
    vae: VAEOptions = field(default_factory=VAEOptions)
    mdn: MDNOptions = field(default_factory=MDNOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    accept: AcceptConfig = field(default_factory=AcceptConfig)

    @property
    def in_channels(self) -> int:
        return self.frames.channels * (2 if self.frames.motion_lag > 0 else 1)

    def vae_config(self) -> VAEConfig:
        return VAEConfig(
            in_channels=self.in_channels, height=self.frames.height, width=self.frames.width, **asdict(self.vae)
        )

    def mdn_config(self) -> MDNConfig:
        rows, cols = self.vae_config().grid
        return MDNConfig(latent_dim=self.vae.latent_channels, cells=rows * cols, cols=cols, **asdict(self.mdn))


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
        elif isinstance(default, tuple) and isinstance(value, list):
            value = _frozen(value)  # anything else is left for validate to refuse by name
        kwargs[name] = value
    return cls(**kwargs)


def _frozen(value: Any) -> Any:
    """Lists (nested: a polygon's points) as tuples, as a frozen config holds them."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    """Tuples (nested) as lists, as the JSON file has them."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Rule:
    """What one config value may be; the error that refuses another value says it."""

    kind: type  # int, float, bool, str, tuple (of ints: a list in the JSON), or list (of polygons)
    low: float | None = None  # the least value allowed...
    high: float | None = None  # ...and the largest
    open: bool = False  # low and high themselves are not allowed
    choices: tuple[Any, ...] = ()
    odd: bool = False
    note: str = ""  # what a special value means, e.g. "0: from the video"

    def allowed(self) -> str:
        """The values allowed, in words: 'a whole number of 1 or more', 'one of 1, 3'..."""
        if self.choices:
            return "one of " + ", ".join(repr(c) if isinstance(c, str) else str(c) for c in self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is list:
            return f"a list of polygons, each a list of at least 3 [x, y] points of {self.low:g} or more"
        what = {int: "a whole number", float: "a number", tuple: "a list of whole numbers"}[self.kind]
        if self.odd:
            what = "an odd whole number"
        if self.kind is tuple:
            return f"{what}, each of {self.low:g} or more"
        if self.low is not None and self.high is not None:
            span = f"between {self.low:g} and {self.high:g}" + (" (exclusive)" if self.open else "")
        elif self.low is not None:
            span = f"above {self.low:g}" if self.open else f"of {self.low:g} or more"
        else:
            span = ""
        return " ".join(part for part in (what, span) if part) + (f" ({self.note})" if self.note else "")

    def fits(self, value: Any) -> bool:
        if self.choices:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind is tuple:
            return isinstance(value, tuple) and bool(value) and all(Rule(int, self.low).fits(v) for v in value)
        if self.kind is list:
            point = Rule(float, self.low)
            return isinstance(value, tuple) and all(
                isinstance(p, tuple)
                and len(p) >= 3
                and all(isinstance(xy, tuple) and len(xy) == 2 for xy in p)
                and all(point.fits(v) for xy in p for v in xy)
                for p in value
            )
        if self.kind is bool or isinstance(value, bool):  # True is an int to Python, not to a config
            return isinstance(value, bool) and self.kind is bool
        if not isinstance(value, int if self.kind is int else (int, float)) or not math.isfinite(value):
            return False
        low_ok = self.low is None or (value > self.low if self.open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open else value <= self.high)
        return low_ok and high_ok and (not self.odd or value % 2 == 1)


_COUNT, _SOME = Rule(int, 1), Rule(int, 0)  # a whole number of at least 1, at least 0
_POSITIVE, _NOT_NEGATIVE = Rule(float, 0, open=True), Rule(float, 0)
# every value of the config: a new key needs a rule here (tests/test_config.py checks that each has one)
RULES: dict[str, Rule] = {
    "frames.width": Rule(int, 0, note="0: from the first clip's aspect ratio"),
    "frames.height": _COUNT,
    "frames.channels": Rule(int, choices=(1, 3)),
    "frames.stride": _COUNT,
    "frames.motion_lag": _SOME,
    "frames.motion": Rule(str, choices=MOTION_KINDS),
    "frames.motion_gain": _POSITIVE,
    "frames.motion_blur": Rule(int, 1, odd=True),
    "frames.decode_timeout": _POSITIVE,
    "vae.hidden": Rule(tuple, 1),
    "vae.latent_channels": _COUNT,
    "vae.beta": _NOT_NEGATIVE,
    "vae.coords": Rule(bool),
    "mdn.hidden": _COUNT,
    "mdn.mixtures": _COUNT,
    "mdn.cell_embedding": _SOME,
    "mdn.delta": Rule(bool),
    "mdn.residual": Rule(bool),
    "mdn.context": Rule(str, choices=("none", "delta", "both")),
    "train.vae_steps": _COUNT,
    "train.vae_epochs": _NOT_NEGATIVE,
    "train.vae_max_steps": _COUNT,
    "train.mdn_steps": _COUNT,
    "train.mdn_fast_margin": Rule(float, 0, note="0: off"),
    "train.update_epochs": Rule(float, 0, note="0: vae_steps"),
    "train.eval_every": _COUNT,
    "train.patience": _COUNT,
    "train.max_minutes": Rule(float, 0, note="0: no time limit"),
    "train.batch_size": _COUNT,
    "train.lr": _POSITIVE,
    "train.seq_len": _COUNT,
    "train.holdout": Rule(float, 0, 1, open=True),
    "train.block_seconds": _POSITIVE,
    "train.replay_distill": Rule(float, 0, note="0: off"),
    "train.replay_distill_encoder": Rule(float, 0, note="0: the decoder half alone"),
    "train.ewc_strength": _NOT_NEGATIVE,
    "train.dream_temperature": _POSITIVE,
    "train.keep_frames": Rule(int, 0, note="0: none"),
    "train.seed": _SOME,
    "score.recon_planes": Rule(str, choices=("motion", "all")),
    "score.patch": _COUNT,
    "score.patch_stride": _COUNT,
    "score.top_k": _COUNT,
    "score.weights.recon": _NOT_NEGATIVE,
    "score.weights.kl": _NOT_NEGATIVE,
    "score.weights.nll": _NOT_NEGATIVE,
    "score.weights.still": _NOT_NEGATIVE,
    "score.weights.frozen": _NOT_NEGATIVE,
    "score.weights.direction": _NOT_NEGATIVE,
    "score.shrink_seconds": _NOT_NEGATIVE,
    "score.mdn_warmup": _SOME,
    "score.smooth": Rule(int, 0, note="0 or 1: no smoothing"),
    "score.false_alarms": Rule(float, 0, 0.5, open=True),
    "score.min_segment": _COUNT,
    "score.batch_size": _COUNT,
    "score.mask.width": Rule(int, 0, note="the camera's, in pixels; 0: no zones"),
    "score.mask.height": Rule(int, 0, note="the camera's, in pixels; 0: no zones"),
    "score.mask.polygons": Rule(list, 0),
    "accept.margin": _NOT_NEGATIVE,
    "accept.share": Rule(float, 0, 1, open=True),
    "accept.epochs": _POSITIVE,
    "accept.min_steps": _COUNT,
    "accept.max_steps": _COUNT,
}


def _refuse(key: str, rule: Rule, value: Any) -> ConfigError:
    return ConfigError(f"{key} must be {rule.allowed()}, not {_plain(value)!r}")  # as the JSON file has it


def validate(cfg: ProjectConfig) -> None:
    """Refuse (ConfigError, one line naming the key and what it may be) a config with a value out
    of its range, or whose values do not fit together."""
    for key, value in flat(cfg).items():
        if not RULES[key].fits(value):
            raise _refuse(key, RULES[key], value)
    f, sc = cfg.frames, cfg.score
    _check_mask(sc.mask)
    if sc.patch > min(f.width or f.height, f.height):
        raise ConfigError(
            f"score.patch must fit the frame ({min(f.width or f.height, f.height)} pixels or fewer), not {sc.patch}"
        )
    try:
        from .vae import BetaVAE  # a cheap check of the architecture's divisibility rules

        BetaVAE(replace(cfg, frames=f.resolved(f.height, f.height)).vae_config())
    except ValueError as exc:
        raise ConfigError(f"config does not describe a valid model: {exc}") from exc


def _check_mask(mask: MaskConfig) -> None:
    """Zones need the frame size they were drawn on, and must lie inside it."""
    if not mask.polygons:
        return
    if not (mask.width and mask.height):
        raise ConfigError("score.mask.width and height must be the camera's frame size (in pixels) of its polygons")
    for i, polygon in enumerate(mask.polygons, 1):
        for x, y in polygon:
            if x > mask.width or y > mask.height:
                raise ConfigError(
                    f"score.mask.polygons: polygon {i} has the point {x:g},{y:g} outside the "
                    f"{mask.width}x{mask.height} frame"
                )


def _values(part: Any, prefix: str) -> list[tuple[str, Any]]:
    """('section.key', value) of every value of a (nested) config dataclass, schema_version aside."""
    out = []
    for item in fields(part):
        value = getattr(part, item.name)
        if hasattr(value, "__dataclass_fields__"):
            out += _values(value, f"{prefix}{item.name}.")
        elif item.name != "schema_version":
            out.append((prefix + item.name, value))
    return out


def to_dict(cfg: ProjectConfig) -> dict[str, Any]:
    return asdict(cfg)


# -- what a model keeps of the config it was trained with ------------------------------------------

# how long to wait for a decoder, and how hard to pull the latents together while training: neither
# shapes a trained model's inputs nor is part of its architecture
NOT_TRAINED_IN = ("frames.decode_timeout", "vae.beta")
# the score settings a model's calibration was made with: its threshold holds for these
CALIBRATED_WITH = (
    *("recon_planes", "patch", "patch_stride", "top_k", "weights", "shrink_seconds", "mdn_warmup", "smooth"),
    *("false_alarms", "mask"),
)


def flat(cfg: ProjectConfig) -> dict[str, Any]:
    """'section.key' → value of every value of a config ('score.weights.kl' for a nested one)."""
    return dict(_values(cfg, ""))


def trained_in(key: str) -> bool:
    """Whether a config value is part of what a model was trained as: whatever shapes its inputs
    (frames) and its architecture (vae, mdn). A model scores with its own."""
    return key.split(".")[0] in ("frames", "vae", "mdn") and key not in NOT_TRAINED_IN


def calibrated_with(key: str) -> bool:
    """Whether a model's threshold was set for this score value (set anew by `train --stage calibrate`)."""
    section, _, rest = key.partition(".")
    return section == "score" and rest.split(".")[0] in CALIBRATED_WITH


def disagreements(
    model: ProjectConfig, project: ProjectConfig, which: Callable[[str], bool], name: str = "the model"
) -> list[str]:
    """'key is X in vidanom.json, Y in model v0003' for every value `which` picks on which the two differ."""
    mine, theirs = flat(model), flat(project)
    return [
        f"{key} is {_shown(theirs[key])} in {CONFIG_NAME}, {_shown(mine[key])} in {name}"
        for key in mine
        if which(key) and key in theirs and mine[key] != theirs[key]
    ]


def _shown(value: Any) -> str:
    return json.dumps(_plain(value))


def scoring_config(model: ProjectConfig, project: ProjectConfig) -> ProjectConfig:
    """The config a model scores a project's footage with: its own for everything it was trained as
    (trained_in), the project's for how to score (`score`) and how long to wait for a decoder."""
    frames = replace(model.frames, decode_timeout=project.frames.decode_timeout)
    return replace(model, frames=frames, score=project.score)


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
    if data.get("schema_version") == 2:
        score = data.get("score")
        if isinstance(score, dict) and isinstance(score.get("weights"), list):  # by component name, not position
            score["weights"] = _by_name(ScoreWeights, score["weights"], "score.weights")
        data["schema_version"] = 3
    return data


def _by_name(cls: type, values: Any, where: str) -> dict[str, Any]:
    """A sequence of values in the order of cls's fields (as schema 2 wrote score.weights) → by name.
    Weights by position name the four components of release 0.3, or more of them in order; one left
    out (frozen, direction) is 0: it does not count in what such a config says."""
    names = [f.name for f in fields(cls)]
    least = 4 if cls is ScoreWeights else len(names)
    if not isinstance(values, (list, tuple)) or not least <= len(values) <= len(names):
        count = str(len(names)) if least == len(names) else f"{least} to {len(names)}"
        raise ConfigError(f"{where} must hold {count} numbers ({', '.join(names)}), not {values!r}")
    return dict(zip(names, [*values, *[0.0] * (len(names) - len(values))]))


def read_config(path: Path) -> ProjectConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return from_dict(data)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """['vae.beta=0.3', 'score.weights.kl=0.5', ...] → {'vae': {'beta': 0.3}, 'score': {'weights':
    {'kl': 0.5}}}, for with_overrides (values are Python literals)."""
    import ast

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, value = item.split("=", 1)
        section, *names = key.split(".")
        part = out.setdefault(section, {})
        for name in names[:-1]:
            part = part.setdefault(name, {})
        part[names[-1]] = ast.literal_eval(value)
    return out


def fixed_steps(steps: int) -> dict[str, Any]:
    """The train overrides that give each stage a budget of this many optimiser steps (early stopping
    may end it sooner), whatever the footage's length: `with_overrides(cfg, train=fixed_steps(n))`."""
    return {"vae_steps": steps, "vae_epochs": 0.0, "update_epochs": 0.0, "mdn_steps": steps}


def with_overrides(cfg: ProjectConfig, **sections: dict[str, Any]) -> ProjectConfig:
    """A copy of cfg with some fields of some sections replaced, e.g. train={'vae_steps': 2}; a nested
    part by name (score={'weights': {'kl': 0.5}}) or, as schema 2 had it, by position
    (score={'weights': (1, 0.5, 0.25, 2)}). Checked as a config read from a file is (ConfigError)."""
    out = replace(cfg, **{name: _replaced(getattr(cfg, name), vals, name) for name, vals in sections.items() if vals})
    validate(out)
    return out


def _replaced(part: Any, values: dict[str, Any], where: str) -> Any:
    changes = {}
    for name, value in values.items():
        current = getattr(part, name)
        if hasattr(current, "__dataclass_fields__") and not hasattr(value, "__dataclass_fields__"):
            by_name = value if isinstance(value, dict) else _by_name(type(current), value, f"{where}.{name}")
            value = _replaced(current, by_name, f"{where}.{name}")
        changes[name] = _frozen(value) if isinstance(value, list) else value
    return replace(part, **changes)
