"""Latency and reconnection of `watch` over RTSP on loopback, through the library's own watch().

    python benchmarks/live_rtsp.py                   # about 3 minutes on 2 shared cores
    python benchmarks/live_rtsp.py --seconds 60 --downs 0 2 5 12
    python benchmarks/live_rtsp.py -i analyzeduration=100000 -i probesize=32768    # FFmpeg probes less
    python benchmarks/live_rtsp.py --cameras 1 2 3 4 --downs          # many cameras at once, no reconnects

It makes (with PyAV, as benchmarks/throughput.py does) a 720p, 25 fps H.264 clip, trains a
project of the default architecture on its first seconds (few steps: only the cost matters), and
serves the clip with GStreamer's RTSP server on 127.0.0.1 (tests/rtsp_server.py, run by
/usr/bin/python3 with python3-gi and gir1.2-gst-rtsp-server-1.0). Then:
  latency     watch() at the default options over the whole clip: per batch, the seconds from
              the arrival (decoding) of its oldest frame to its scores (status.latency; with the
              frames coming at 25 fps most batches hold one frame), median and 99th percentile
  cameras     for each N of --cameras: N servers, each serving the clip, watched at once by N
              processes (as N `vidanom watch` commands, or `fleet watch`'s N actors, run): per
              camera the frames scored and dropped and the median and 99th percentile latency
  reconnect   for each down time: the server killed mid-stream and started again on the same port
              after that many seconds; the seconds from its return (listening again) to the first
              scored frame after the gap, and from the loss being noticed to that frame (the
              backoff waits 1, 2, 4 ... s between attempts)
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from throughput import copy_packets, make_clip

from vidanom import training
from vidanom.config import ProjectConfig, fixed_steps, with_overrides
from vidanom.project import Project
from vidanom.watch import Watcher, WatchOptions, WatchStatus

SERVER = Path(__file__).resolve().parents[1] / "tests" / "rtsp_server.py"
CPU = torch.device("cpu")


class Server:
    """tests/rtsp_server.py serving one clip; the same port at every start."""

    def __init__(self, clip: Path) -> None:
        self.clip, self.port, self.proc = clip, 0, None
        self.ready_at = 0.0  # time.monotonic() when it last started listening

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(SERVER), str(self.clip), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit(f"the RTSP server did not start ({line!r}); run {SERVER} --check")
        self.ready_at, self.port = time.monotonic(), int(line.split()[1])

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()


@dataclass
class Trace:
    """What the status callback saw: per batch (latency, frames), and when the stream was lost and back."""

    batches: list[tuple[float, int]] = field(default_factory=list)
    frames: int = 0
    lost_at: float | None = None
    back_at: float | None = None  # the first scored frame after a gap

    def __call__(self, s: WatchStatus) -> None:
        if s.state == "reconnecting" and self.lost_at is None:
            self.lost_at = time.monotonic()
        if s.frames > self.frames:
            self.batches.append((s.latency, s.frames - self.frames))
            if s.gaps and self.back_at is None:
                self.back_at = time.monotonic()
        self.frames = s.frames


def train(work: Path, clip: Path, seconds: float, steps: int) -> Project:
    """A project of the default architecture, trained briefly on the clip's first seconds (once per
    work folder)."""
    root = work / "project"
    if (root / "models").is_dir():
        return Project.open(root)
    shutil.rmtree(root, ignore_errors=True)
    part = copy_packets(clip, work / "train.mp4", seconds=seconds)
    cfg = with_overrides(ProjectConfig(), train=fixed_steps(steps))
    project = Project.init(root, cfg)
    training.train(project, [part], device=CPU)
    return project


def latency(project: Project, server: Server, options: dict[str, str]) -> None:
    trace = Trace()
    status = Watcher(
        project, server.url, WatchOptions(reconnect=False, input_options=options), device=CPU, on_status=trace
    ).run()
    lat = np.array([b[0] for b in trace.batches]) * 1000
    sizes = [b[1] for b in trace.batches]
    print(
        f"latency over {status.frames} frames ({status.dropped} dropped) in {len(sizes)} batches "
        f"(mean {statistics.mean(sizes):.2f} frames, largest {max(sizes)}): median {np.median(lat):.1f} ms, "
        f"99th percentile {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms",
        flush=True,
    )


def watch_one(root: Path, url: str, options: dict[str, str]) -> tuple[int, int, float, float]:
    """One camera watched to the end of its stream → (frames scored, dropped, median and 99th
    percentile latency in ms)."""
    trace = Trace()
    status = Watcher(
        Project.open(root), url, WatchOptions(reconnect=False, input_options=options), device=CPU, on_status=trace
    ).run()
    lat = np.array([b[0] for b in trace.batches]) * 1000
    return status.frames, status.dropped, float(np.median(lat)), float(np.percentile(lat, 99))


def cameras(project: Project, clip: Path, n: int, options: dict[str, str]) -> None:
    """n servers of the clip watched at once, each by its own process."""
    servers = [Server(clip) for _ in range(n)]
    try:
        for server in servers:
            server.start()
        with multiprocessing.get_context("spawn").Pool(n) as pool:
            rows = pool.starmap(watch_one, [(project.root, s.url, options) for s in servers])
    finally:
        for server in servers:
            server.kill()
    frames, dropped = sum(r[0] for r in rows), sum(r[1] for r in rows)
    print(
        f"{n} camera(s): {frames} frames scored, {dropped} dropped; latency median "
        f"{max(r[2] for r in rows):.1f} ms, 99th percentile {max(r[3] for r in rows):.1f} ms (the worst camera's)",
        flush=True,
    )


def reconnect(
    project: Project, server: Server, down: float, after: float, options: dict[str, str]
) -> tuple[float, float]:
    """Kill the server `after` s into the stream, start it again `down` s later → (return → first
    scored frame, loss noticed → first scored frame), in seconds."""
    trace = Trace()
    watcher = Watcher(project, server.url, WatchOptions(input_options=options), device=CPU, on_status=trace)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        _until(lambda: trace.frames > 0, 60)
        time.sleep(after)
        server.kill()
        time.sleep(down)
        server.start()
        _until(lambda: trace.back_at is not None, 90)
    finally:
        watcher.stop()
        thread.join(timeout=10)
    assert trace.back_at is not None and trace.lost_at is not None
    return trace.back_at - server.ready_at, trace.back_at - trace.lost_at


def _until(done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the served clip")
    ap.add_argument("--train-seconds", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=100, help="optimiser steps of each model")
    ap.add_argument("--downs", type=float, nargs="*", default=[0.0, 2.0, 5.0], help="server down times, s")
    ap.add_argument("--cameras", type=int, nargs="*", default=[], help="numbers of cameras to watch at once")
    ap.add_argument(
        "-i",
        "--input-option",
        action="append",
        default=[],
        help="FFmpeg input option KEY=VALUE, as `watch -i` (e.g. probesize=32768)",
    )
    ap.add_argument("--workdir", type=Path, help="keep the clip and project here (default: a temporary folder)")
    args = ap.parse_args()
    options = dict(item.split("=", 1) for item in args.input_option)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vidanom-live-rtsp-"))
    work.mkdir(parents=True, exist_ok=True)
    clip = work / f"clip_{args.seconds:g}s.mp4"
    if not clip.exists():
        make_clip(clip, args.seconds)
    project = train(work, clip, args.train_seconds, args.steps)
    print(
        f"work folder {work}; torch {torch.get_num_threads()} threads; clip 1280x720 at 25 fps, "
        f"{args.seconds:g} s; input options {options or 'none'}",
        flush=True,
    )
    for n in args.cameras:
        cameras(project, clip, n, options)
    server = Server(clip)
    server.start()
    try:
        if not args.cameras:
            latency(project, server, options)
        for down in args.downs:
            from_return, from_loss = reconnect(project, server, down, 3.0, options)
            print(
                f"server down {down:g} s: its return → first scored frame {from_return:.2f} s "
                f"(loss noticed → first scored frame {from_loss:.2f} s)",
                flush=True,
            )
    finally:
        server.kill()


if __name__ == "__main__":
    main()
