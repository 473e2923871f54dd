"""A Detector: one trained model version in one file, and scoring with it in memory.

Everything a version needs, to score and to learn the next scene from, is one `model.pt`, loadable
with `torch.load(..., weights_only=True)`: the config it was trained with, the β-VAE and LSTM-MDN
(architecture and weights), the calibration, each scene's latent Gaussian (what replay samples),
the EWC state and the lineage (what `version.json` shows). Versions written before this file
existed hold the same in six files; they are read as they are.

    detector = Detector.load("cam1")                     # a project: its current version
    for frame in detector.score_video("clip.mp4"):       # streaming, constant memory
        ...
    scores = detector.score_frames(frames)               # (n, H, W, C) uint8 in memory
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import fsutil
from .normality import Calibration
from .config import (
    CONFIG_NAME,
    ProjectConfig,
    disagreements,
    from_dict,
    read_config,
    scoring_config,
    to_dict,
    trained_in,
)
from .errors import ConfigError, ProjectError
from .fitting import build_mdn, build_vae, load_checkpoint
from .mdn import LSTMMDN
from .project import Project
from .replay import LatentPrior
from .scoring import Scorer, anomalous, iter_scores, make_scorer
from .vae import BetaVAE, patch_means
from .video import DecodeReport, Source, find_sources, iter_timed_chunks

MODEL_FILE = "model.pt"
FORMAT = 1  # of model.pt; bump when it can no longer be read as it is
LEGACY_FILES = ("vae.pt", "mdn.pt", "calibration.pt", "ewc.pt", "prior.pt")  # with version.json
log = logging.getLogger("vidanom")


class FrameScore(NamedTuple):
    """One scored frame."""

    frame: int  # its number in the clip (after the stride)
    time: float  # seconds from the clip's first frame, from its timestamp
    recon: float  # the components (see scoring.components); nll is NaN in the LSTM-MDN's warm-up
    kl: float
    nll: float
    still: float  # NaN in the LSTM-MDN's warm-up
    frozen: float  # NaN where the calibration has no usual picture of the scene (made before 0.5.0)
    direction: float  # NaN where the calibration has no direction histograms of the scene (made before 0.6.0)
    scene: str  # the learned scene it was scored against
    score: float  # the combined score
    anomalous: bool  # the verdict (scoring.anomalous: score > the threshold)


@dataclass
class ChunkScores:
    """Scores of consecutive frames: (n,) arrays, components (n, 6)."""

    start: int  # frame number of the first
    times: np.ndarray
    components: np.ndarray
    scenes: np.ndarray  # (n,) scene names
    scores: np.ndarray
    anomalous: np.ndarray

    def frames(self) -> Iterator[FrameScore]:
        rows = zip(
            self.times.tolist(),
            self.components.tolist(),
            self.scenes.tolist(),
            self.scores.tolist(),
            self.anomalous.tolist(),
        )
        for i, (t, (r, k, n, st, fz, d), s, sc, a) in enumerate(rows):
            yield FrameScore(self.start + i, t, r, k, n, st, fz, d, s, sc, a)


@dataclass
class Detector:
    """One model version: everything to score footage, and to learn a new scene from."""

    # what the models were trained with (the model file's); a project's score settings and decode time
    # limit when it scores a project's footage (for_project)
    config: ProjectConfig
    vae: BetaVAE
    mdn: LSTMMDN | None
    calibration: Calibration
    prior: LatentPrior | None = None  # each learned scene's Gaussian in latent space (what replay samples)
    ewc: dict[str, Any] | None = None  # EWCPenalty.to_dict(): the Fisher information of the scenes learned
    info: dict[str, Any] = field(default_factory=dict)  # the lineage: version, scene(s), parent, strategy...

    @property
    def version(self) -> str | None:
        return self.info.get("version")

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    # -- files ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors only: torch.load(weights_only=True) reads it back."""
        return {
            "format": FORMAT,
            "config": to_dict(self.config),
            "vae": {"config": asdict(self.vae.cfg), "model": _cpu(self.vae.state_dict())},
            "mdn": None if self.mdn is None else {"config": asdict(self.mdn.cfg), "model": _cpu(self.mdn.state_dict())},
            "calibration": self.calibration.to_dict(),
            "prior": None if self.prior is None else self.prior.to_dict(),
            "ewc": self.ewc,
            "info": json.loads(json.dumps(self.info)),
        }

    def save(self, path: Path) -> None:
        """Write the model file atomically (a version folder: its model.pt)."""
        fsutil.save_torch(path / MODEL_FILE if path.is_dir() else path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], project_config: ProjectConfig | None = None) -> Detector:
        """The model of a model file's data; project_config: the config of a version written before
        model files held the config they were trained with (six files), which is its project's."""
        if not isinstance(data, dict) or "vae" not in data:
            raise ProjectError("not a vidanom model file: it is damaged; train again or restore it")
        if int(data.get("format", 0)) > FORMAT:
            raise ProjectError("the model was written by a newer vidanom; upgrade vidanom to read it")
        try:
            config = from_dict(data["config"]) if data.get("config") is not None else project_config
            if config is None:
                raise KeyError("config")
            return cls(
                config,
                build_vae(data["vae"]),
                build_mdn(data["mdn"]) if data.get("mdn") else None,
                Calibration.from_dict(data["calibration"]),
                LatentPrior.from_dict(data["prior"]) if data.get("prior") else None,
                data.get("ewc"),
                dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # readable, but not what a model holds
            raise ProjectError(f"the model is damaged ({type(exc).__name__}: {exc}); train again") from exc

    @classmethod
    def load(cls, where: str | Path | Project) -> Detector:
        """The model in a model file or a version folder, as it was trained; or a project's current
        version, to score the project's footage with (see for_project)."""
        if isinstance(where, Project) or (Path(where) / CONFIG_NAME).is_file():
            return cls.for_project(where if isinstance(where, Project) else Project.open(Path(where)))
        return cls._read(Path(where), None)

    @classmethod
    def of_version(cls, project: Project, version: str | None = None) -> Detector:
        """A version of the project (default: its current one) as it was trained."""
        return cls._read(project.require_version() if version is None else project.models_dir / version, project.config)

    @classmethod
    def for_project(cls, project: Project, version: str | None = None) -> Detector:
        """A version of the project (default: its current one), to score the project's footage: as it
        was trained (the frame settings and architecture of its model file), with the project's score
        settings (config.scoring_config). Logs a warning for each setting of vidanom.json that the
        model was trained otherwise with; raises ConfigError when the project's score.patch settings
        do not fit the model's calibration."""
        detector = cls.of_version(project, version)
        name = f"model {detector.version}"
        for line in disagreements(detector.config, project.config, trained_in, name):
            log.warning(f"{line}: scored as the model was trained; 'vidanom train' trains anew with {CONFIG_NAME}'s")
        return detector.scoring(project.config)

    @classmethod
    def _read(cls, path: Path, project_config: ProjectConfig | None) -> Detector:
        if path.is_dir() and not (path / MODEL_FILE).exists():
            return cls._legacy(path, project_config)
        file = path / MODEL_FILE if path.is_dir() else path
        if not file.exists():
            raise ProjectError(f"no model at {path}: pass a model file, a version folder or a project")
        try:
            return cls.from_dict(load_checkpoint(file), project_config)
        except ProjectError as exc:
            raise ProjectError(f"{file}: {exc}") from exc

    @classmethod
    def _legacy(cls, version: Path, config: ProjectConfig | None) -> Detector:
        """A version written as six files (vae.pt, mdn.pt, calibration.pt, ewc.pt, prior.pt,
        version.json), read as it is; its config is its project's (the file holds none)."""
        if not (version / "vae.pt").exists():
            raise ProjectError(f"no model in {version}: it holds neither {MODEL_FILE} nor vae.pt")
        config = config or read_config(version.parent.parent / CONFIG_NAME)
        part = {name: load_checkpoint(version / name) for name in LEGACY_FILES if (version / name).exists()}
        try:
            info = json.loads((version / "version.json").read_text())
        except (OSError, json.JSONDecodeError):
            info = {"version": version.name}
        return cls.from_dict(
            {
                "config": None,
                "vae": part["vae.pt"],
                "mdn": part.get("mdn.pt"),
                "calibration": part.get("calibration.pt"),
                "prior": part.get("prior.pt"),
                "ewc": part.get("ewc.pt"),
                "info": info,
            },
            config,
        )

    def scoring(self, project: ProjectConfig) -> Detector:
        """This model with a project's score settings (config.scoring_config). Raises ConfigError
        when the project's patches are not those of the model's calibration."""
        config = scoring_config(self.config, project)
        sc, fc = config.score, config.frames
        positions = patch_means(torch.zeros(1, fc.height, fc.width), sc.patch, sc.patch_stride).shape[1]
        if self.calibration.err_mean.shape[-1] != positions:
            raise ConfigError(
                f"model {self.version} was calibrated on other patches than score.patch = "
                f"{sc.patch}, score.patch_stride = {sc.patch_stride} give; set them back or train again"
            )
        return replace(self, config=config)

    # -- scoring -------------------------------------------------------------------------------------

    def scorer(self, device: torch.device | None = None) -> Scorer:
        """A fresh Scorer of this model (fast inference copy of the β-VAE), for one clip."""
        from .inference import for_inference

        device = device or torch.device("cpu")
        mdn = self.mdn.to(device).eval() if self.mdn is not None else None
        return make_scorer(for_inference(self.vae, device), mdn, self.config, device, self.calibration.frame_interval)

    def score_chunks(
        self, chunks: Iterable[tuple[np.ndarray, np.ndarray | None]], device: torch.device | None = None
    ) -> Iterator[ChunkScores]:
        """Score the chunks of one clip, in order: (frames (n, H, W, C) uint8 at the model's size,
        times (n,) in seconds or None) → ChunkScores, streaming."""
        cal, start, times_seen = self.calibration, 0, []
        scenes = np.asarray(cal.scenes)

        def timed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            n, dt = 0, cal.frame_interval or 1.0  # frames without times: at the model's usual interval
            for frames, times in chunks:
                t = np.asarray(times, np.float64) if times is not None else (n + np.arange(len(frames))) * dt
                times_seen.append(t)
                n += len(frames)
                yield frames, t

        for comp, scene, score in iter_scores(self.scorer(device), timed(), cal, self.config.score):
            s = score.numpy()
            flags = anomalous(s, cal.threshold)
            yield ChunkScores(start, times_seen.pop(0), comp.numpy(), scenes[scene.numpy()], s, flags)
            start += len(s)

    def score_frames(
        self, frames: np.ndarray, times: np.ndarray | None = None, device: torch.device | None = None
    ) -> ChunkScores:
        """Score the frames of one clip in memory: (n, H, W, C) uint8 at the model's frame size (config.frames)."""
        fc = self.config.frames
        if frames.ndim != 4 or frames.shape[1:] != (fc.height, fc.width, fc.channels) or frames.dtype != np.uint8:
            raise ConfigError(
                f"frames must be uint8 (n, {fc.height}, {fc.width}, {fc.channels}), "
                f"not {frames.dtype} {tuple(frames.shape)}"
            )
        size = self.config.score.batch_size
        parts = list(
            self.score_chunks(
                (
                    (frames[s : s + size], None if times is None else times[s : s + size])
                    for s in range(0, len(frames), size)
                ),
                device,
            )
        )
        return ChunkScores(
            0,
            *(
                np.concatenate([getattr(p, k) for p in parts])
                for k in ("times", "components", "scenes", "scores", "anomalous")
            ),
        )

    def score_source(
        self, src: Source, device: torch.device | None = None, report: DecodeReport | None = None
    ) -> Iterator[ChunkScores]:
        """Decode a clip (in a producer thread, a few chunks ahead) and score it, chunk by chunk."""
        from .inference import DECODING_THREADS, scoring_threads, torch_threads
        from .prefetch import prefetch

        device = device or torch.device("cpu")
        fc = self.config.frames
        chunks = prefetch(
            iter_timed_chunks(src, fc, self.config.score.batch_size, report, DECODING_THREADS),
            depth=3,
            name=f"vidanom-decode {src.name}",
        )
        try:
            with torch_threads(scoring_threads(device)):
                yield from self.score_chunks(chunks, device)
        finally:
            chunks.close()  # on an error, Ctrl-C or a consumer that stops early: stop decoding, close the file

    def score_video(self, path: str | Path, device: torch.device | None = None) -> Iterator[FrameScore]:
        """Every frame of one video file or frame folder, scored as it decodes, in constant memory."""
        (src,) = _one(Path(path))
        for chunk in self.score_source(src, device):
            yield from chunk.frames()


def _one(path: Path) -> list[Source]:
    sources = find_sources([path])
    if len(sources) != 1:
        from .errors import VideoError

        raise VideoError(f"{path} holds {len(sources)} clips; pass one video file or frame folder")
    return sources


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}
