"""Shared fixtures: tiny synthetic videos written with PyAV, a folder of PNG frames, and tiny projects.

Everything here is small on purpose (64x48 clips of 48 frames, 32x32 gray models, eight optimiser steps), so the
whole suite runs in well under a minute on two shared cores. No real dataset is ever read.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vidanom.cli import app
from vidanom.config import CONFIG_NAME, ProjectConfig, to_dict, with_overrides

torch.set_num_threads(1)  # the machine is shared; tiny models gain nothing from more threads

WIDTH, HEIGHT, FPS = 64, 48, 25
N_FRAMES = 48
NORMAL_FRAMES = 96  # the normal clips: 8 s of footage to learn from, hold out and calibrate on
ANOMALY = (24, 40)  # frames [24, 40) of the anomalous clip show a large, fast square


def background(h: int = HEIGHT, w: int = WIDTH) -> np.ndarray:
    """A static, textured RGB background: a gradient plus two fixed dark blocks."""
    ys, xs = np.mgrid[0:h, 0:w]
    g = (40 + 80 * xs / (w - 1) + 30 * ys / (h - 1)).astype(np.uint8)
    img = np.stack([g, g, g], -1)
    img[4:12, 40:56] = 20
    img[34:44, 6:14] = 30
    return img


def square_frames(
    n: int, x0: float, y0: int, speed: float, size: int, color: tuple[int, int, int] = (255, 255, 255)
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """n RGB frames of a square moving right (wrapping), and its centre (x, y) in each frame."""
    bg = background()
    frames, centres = [], []
    for t in range(n):
        x = int(round(x0 + speed * t)) % (WIDTH - size)
        f = bg.copy()
        f[y0 : y0 + size, x : x + size] = color
        frames.append(f)
        centres.append((x + (size - 1) / 2, y0 + (size - 1) / 2))
    return np.stack(frames), centres


def write_video(path: Path, frames: np.ndarray, fps: int = FPS, codec: str = "mpeg4") -> Path:
    """Encode RGB frames (n, H, W, 3) as yuv420p video with PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000  # near-lossless: decoded squares keep their edges
        else:
            stream.options = {"crf": "12", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


VFR_PTS_MS = [0, 100, 800, 900, 2000, 2040, 2080, 3000, 3040, 5000]  # irregular frame times, in ms


def write_vfr(
    path: Path,
    pts: list[int],
    time_base: Fraction = Fraction(1, 1000),
    frames: np.ndarray | None = None,
    rate: int = FPS,
) -> Path:
    """A variable-frame-rate video: frame i shown at pts[i] · time_base seconds (explicit PTS; for
    an AVI in 1/rate, the skipped slots are dropped frames). Frames default to a square moving right."""
    if frames is None:
        frames, _ = square_frames(len(pts), 4, 20, 3.0, 8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000
        stream.time_base = stream.codec_context.time_base = time_base
        for p, f in zip(pts, frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def anomalous_frames() -> np.ndarray:
    """A normal clip in which frames ANOMALY[0]..ANOMALY[1]-1 add a large square moving fast."""
    frames, _ = square_frames(N_FRAMES, 4, 20, 1.0, 8)
    big, _ = square_frames(ANOMALY[1] - ANOMALY[0], 0, 8, 4.0, 18, (250, 250, 250))
    a, b = ANOMALY
    mask = (big != background()[None]).any(-1)  # where the big square is
    frames[a:b][mask] = big[mask]
    return frames


@dataclass(frozen=True)
class Clips:
    folder: Path  # a folder holding the two normal clips only
    normal_a: Path
    normal_b: Path
    anomalous: Path
    moving: Path  # an RGB clip with a red square moving 3 px per frame
    moving_centres: list[tuple[float, float]]
    frames_dir: Path  # a folder of PNG frames (one clip)
    n_frames: int  # of the anomalous and the moving clip
    normal_frames: int  # of each normal clip
    n_png: int


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("videos")
    normal = root / "normal"
    normal.mkdir()
    a = write_video(normal / "normal_a.mp4", square_frames(NORMAL_FRAMES, 4, 20, 1.0, 8)[0])
    b = write_video(normal / "normal_b.mp4", square_frames(NORMAL_FRAMES, 30, 28, 1.0, 8)[0], codec="libx264")
    anom = write_video(root / "anom.mp4", anomalous_frames())
    moving_frames, centres = square_frames(N_FRAMES, 2, 16, 3.0, 10, (230, 20, 20))
    moving = write_video(root / "moving.mp4", moving_frames)
    pngs = root / "pngs"
    pngs.mkdir()
    png_frames, _ = square_frames(12, 10, 10, 2.0, 8)
    for i, f in enumerate(png_frames):
        Image.fromarray(f).save(pngs / f"frame_{i:03d}.png")
    return Clips(normal, a, b, anom, moving, centres, pngs, N_FRAMES, NORMAL_FRAMES, len(png_frames))


def tiny_config(**sections: dict) -> ProjectConfig:
    """32x32 gray frames, a two-layer VAE, a 16-unit LSTM, eight optimiser steps of each (not more
    for longer footage)."""
    base = with_overrides(
        ProjectConfig(),
        frames={"width": 32, "height": 32, "channels": 1, "stride": 1, "motion_lag": 1},
        vae={"hidden": (8, 16), "latent_channels": 2, "beta": 0.1},
        mdn={"hidden": 16, "mixtures": 2, "cell_embedding": 4},
        train={
            "vae_steps": 8,
            "vae_epochs": 0.0,
            "mdn_steps": 8,
            "eval_every": 4,
            "batch_size": 16,
            "seq_len": 8,
            "seed": 0,
        },
        score={"patch": 8, "patch_stride": 4, "smooth": 3, "min_segment": 2, "batch_size": 16},
    )
    return with_overrides(base, **sections)


runner = CliRunner()


def invoke(*args: str | Path, **kwargs):
    """Run the CLI in-process; tracebacks of unexpected exceptions stay visible in result.exception."""
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VIDANOM_PROJECT", "VIDANOM_DEBUG", "VIDANOM_PROGRESS"):
        monkeypatch.delenv(var, raising=False)


def make_project(root: Path, cfg: ProjectConfig | None = None) -> Path:
    """`vidanom init root`, then write the tiny config into its vidanom.json."""
    res = invoke("init", root)
    assert res.exit_code == 0, res.output
    (root / CONFIG_NAME).write_text(json.dumps(to_dict(cfg or tiny_config()), indent=2))
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh, untrained tiny project."""
    return make_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def trained_project_template(tmp_path_factory: pytest.TempPathFactory, clips: Clips) -> Path:
    """A tiny project trained once per session on the two normal clips (read-only: copy before writing)."""
    root = make_project(tmp_path_factory.mktemp("trained") / "proj")
    res = invoke("train", clips.folder, "--steps", "8", "--seed", "0", "--device", "cpu", "-p", root)
    assert res.exit_code == 0, res.output
    return root


def private_copy(template: Path, dst: Path) -> Path:
    """A copy of a session-wide project template that one test may write to."""
    shutil.copytree(template, dst)
    return dst


@pytest.fixture
def trained_project(tmp_path: Path, trained_project_template: Path) -> Path:
    """A private copy of the trained project, free to write to."""
    return private_copy(trained_project_template, tmp_path / "trained")


@pytest.fixture(scope="session")
def scored_template(tmp_path_factory: pytest.TempPathFactory, trained_project_template: Path, clips: Clips) -> Path:
    """The trained project, with the anomalous clip scored once (read-only: copy before writing)."""
    root = private_copy(trained_project_template, tmp_path_factory.mktemp("scored") / "proj")
    res = invoke("score", clips.anomalous, "--device", "cpu", "-p", root)
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def scored(tmp_path: Path, scored_template: Path) -> Path:
    """A private copy of the scored project, free to write to."""
    return private_copy(scored_template, tmp_path / "scored")
