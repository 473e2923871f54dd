"""Shared fixtures: tiny synthetic videos written with PyAV, a folder of PNG frames, tiny projects, and a
real RTSP server on loopback (skipped, with the reason, where GStreamer's is not installed).

Everything here is small on purpose (64x48 clips of 48 frames, 32x32 gray models, eight optimiser steps), so the
whole suite runs in well under a minute on two shared cores. No real dataset is ever read.
"""

from __future__ import annotations

import getpass
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import NoReturn
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
REPEAT = WIDTH - 8  # frames of each stretch of anomalous_frames(times): the small square's round, 1 pixel a frame
NORMAL_FRAMES = 96  # the normal clips: 8 s of footage to learn from, hold out and calibrate on
ANOMALY = (24, 40)  # frames [24, 40) of the anomalous clip show a large, fast square
EVENT_KEYS = ("start_frame", "end_frame", "peak_frame")  # where an event or segment lies, in frames


def ctrl_c_works() -> None:
    """preexec_fn of a child a test will Ctrl-C: run from a shell's background job, the tests inherit
    SIGINT ignored, and a Python started so never raises KeyboardInterrupt (the test would fail, or
    test nothing); as a person's terminal runs it, Ctrl-C interrupts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


def write_video(path: Path, frames: np.ndarray, fps: int = FPS, codec: str = "mpeg4", gop: int | None = None) -> Path:
    """Encode RGB frames (n, H, W, 3) as yuv420p video with PyAV; gop: frames between H.264 keyframes."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000  # near-lossless: decoded squares keep their edges
        elif codec == "libx264":
            stream.options = {
                "crf": "12",
                "preset": "ultrafast",
                **({"g": str(gop), "keyint_min": str(gop)} if gop else {}),
            }
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


def anomalous_frames(times: int = 1) -> np.ndarray:
    """A normal clip in which frames ANOMALY[0]..ANOMALY[1]-1 add a large square moving fast (N_FRAMES
    frames); or `times` such stretches of REPEAT frames, one continuous clip in which the small square
    wraps round inside each anomaly (a clip joined to itself would jump back at every join: a cut, and
    a jump `direction` rightly sees)."""
    if times == 1:
        frames, _ = square_frames(N_FRAMES, 4, 20, 1.0, 8)
    else:
        frames, _ = square_frames(REPEAT * times, REPEAT - ANOMALY[0], 20, 1.0, 8)
    big, _ = square_frames(ANOMALY[1] - ANOMALY[0], 0, 8, 4.0, 18, (250, 250, 250))
    mask = (big != background()[None]).any(-1)  # where the big square is
    for start in range(0, len(frames), REPEAT if times > 1 else N_FRAMES):
        frames[start + ANOMALY[0] : start + ANOMALY[1]][mask] = big[mask]
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
            "update_epochs": 0.0,
            "mdn_steps": 8,
            "eval_every": 4,
            "batch_size": 16,
            "seq_len": 8,
            "seed": 0,
        },
        score={"patch": 8, "patch_stride": 4, "smooth": 3, "min_segment": 2, "batch_size": 16},
    )
    return with_overrides(base, **sections)


# -- optional dependencies: a loud skip where one is missing, a failure where it is required ----------

# what the tests that skip need, and how to get it
DEPENDENCIES = {
    "gstreamer": "GStreamer's RTSP server for the system Python (the RTSP tests)",
    "chromium": "Chromium (the report's browser tests)",
    "ray": "Ray (the fleet's tests): pip install 'vidanom[ray]'",
}


def required() -> set[str]:
    """The dependencies that must be there: .ci/run names those it installed in $VIDANOM_REQUIRE."""
    return {d.strip() for d in os.environ.get("VIDANOM_REQUIRE", "").split(",") if d.strip()}


def missing(dependency: str, why: str) -> NoReturn:
    """Skip the test, saying why; fail it where the dependency is required (a skipped test must never
    hide a broken install)."""
    if dependency in required():
        pytest.fail(f"{why} (VIDANOM_REQUIRE says {dependency} was installed)", pytrace=False)
    pytest.skip(f"[{dependency}] {why}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly, at the end, how many tests did not run and why: a skip is not a pass."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.section(f"{len(skipped)} TEST(S) SKIPPED: they did not run", sep="!", yellow=True, bold=True)
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.line(f"{count:4d} skipped: {reason}", yellow=True, bold=True)
    names = sorted({d for d in DEPENDENCIES if any(r.startswith(f"[{d}]") for r in reasons)})
    if names:
        terminalreporter.line(
            "install " + "; ".join(DEPENDENCIES[d] for d in names) + " to run them (.ci/run does, where it can)",
            yellow=True,
        )


@pytest.fixture(scope="session")
def ray_installed() -> None:
    """Skip (or fail, where it is required) where Ray is not installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        missing("ray", "the fleet runs on Ray: pip install 'vidanom[ray]'")


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


# -- a real RTSP server (GStreamer's gst-rtsp-server, run by the system Python) -----------------------

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
RTSP_INSTALL = (
    "apt-get install gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad python3-gi"
)


def _server_env() -> dict[str, str]:
    """The environment for the system Python: without this interpreter's paths."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def next_line(proc: subprocess.Popen, pipe, timeout: float) -> str:
    """The next line of a child's pipe, within timeout seconds, while it runs."""
    deadline = time.monotonic() + timeout
    while not select.select([pipe], [], [], 0.1)[0]:
        assert time.monotonic() < deadline, "timed out waiting for a line"
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
    return pipe.readline()


@pytest.fixture(scope="session")
def gstreamer() -> None:
    """Skip (or fail, where it is required) where GStreamer's RTSP server cannot run."""
    if not Path(SYSTEM_PYTHON).exists():
        missing("gstreamer", f"no {SYSTEM_PYTHON} to run GStreamer's RTSP server ({RTSP_INSTALL})")
    probe = subprocess.run(
        [SYSTEM_PYTHON, str(RTSP_SERVER), "--check"], capture_output=True, text=True, timeout=60, env=_server_env()
    )
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["?"])[-1]
        missing("gstreamer", f"{why}; to run the RTSP tests: {RTSP_INSTALL}")


class RtspServer:
    """gst-rtsp-server serving one clip at rtsp://127.0.0.1:PORT/cam, in a child process. The port is
    free one at the first start, and the same one at every later start."""

    def __init__(self, clip: Path, udp_only: bool = False) -> None:
        self.clip, self.udp_only, self.port = clip, udp_only, 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        args = [SYSTEM_PYTHON, str(RTSP_SERVER), str(self.clip), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            args + (["--udp-only"] if self.udp_only else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_server_env(),
        )
        line = next_line(self.proc, self.proc.stdout, 30)
        assert line.startswith("ready "), line
        self.port = int(line.split()[1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture
def rtsp(gstreamer) -> Iterator[Callable[..., RtspServer]]:
    """rtsp(clip, udp_only=False) → a started server; every one is killed at the end of the test."""
    servers: list[RtspServer] = []

    def start(clip: Path, udp_only: bool = False) -> RtspServer:
        server = RtspServer(clip, udp_only)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


# -- a real MQTT broker (Debian's mosquitto) on loopback ---------------------------------------------

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_INSTALL = "apt-get install mosquitto"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto listening on 127.0.0.1:PORT only, its database in a folder of its own (so that a
    restart on the same port keeps the persistent sessions: a subscriber misses nothing)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nlog_dest none\n"
            f"user {getpass.getuser()}\n"  # as root it would become the user 'mosquitto', who cannot write the folder
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not _accepts(self.port):
            assert self.proc.poll() is None, f"mosquitto exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
            assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
            time.sleep(0.05)

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A started mosquitto on a free loopback port; skipped, saying how to install it, where it is missing."""
    if MOSQUITTO is None:
        missing("mosquitto", f"MQTT tests need Debian's mosquitto broker, which is not installed: {MOSQUITTO_INSTALL}")
    pytest.importorskip("paho.mqtt.client", reason="the MQTT output needs paho-mqtt: pip install paho-mqtt")
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    b = Broker(folder)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho client that keeps every message of `topics` (with a persistent session: what is published
    while it is away is delivered when it comes back)."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []  # topic, payload, retained
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{port}", clean_session=False)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), m.retain))
        self.client.on_connect = lambda c, u, f, r, p: [c.subscribe(t, qos=1) for t in topics]
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on(self, topic: str) -> list[str]:
        return [payload for t, payload, _ in list(self.messages) if t == topic]

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.messages}"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- a local HTTP endpoint for webhooks ---------------------------------------------------------------


class Hook:
    """An HTTP server on 127.0.0.1 that keeps the JSON bodies POSTed to it. behave(n) → the status to
    answer the n-th request with (0: hang, without answering, until the test ends or 10 s pass)."""

    def __init__(self, behave: Callable[[int], int] = lambda n: 200) -> None:
        import http.server
        import threading

        hook = self
        self.bodies: list[dict] = []
        self.received: list[float] = []  # time.time() when each body came
        self.requests = 0
        self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.requests += 1
                code = behave(hook.requests)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if code == 0:
                    hook.release.wait(10)
                    return
                if code == 200:
                    hook.bodies.append(body)
                    hook.received.append(time.time())
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Callable[..., Hook]]:
    """hook(behave) → a started endpoint; all are closed at the end of the test."""
    hooks: list[Hook] = []

    def start(behave: Callable[[int], int] = lambda n: 200) -> Hook:
        hooks.append(Hook(behave))
        return hooks[-1]

    yield start
    for h in hooks:
        h.close()
