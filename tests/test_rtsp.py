"""`watch` against a real RTSP server on loopback: GStreamer's gst-rtsp-server (tests/rtsp_server.py,
run by the system Python that has GStreamer's introspection) serving tiny H.264 clips made here.

Over TCP and over UDP (a server that offers only UDP) watch finds the segments `score` finds in the
served file; with the server killed and started again mid-stream it reconnects and reports the next
event; the CLI prints the gap as a JSON line and Ctrl-C ends it while it waits to reconnect.
Skipped, with the reason, where GStreamer's RTSP server is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import EVENT_KEYS, anomalous_frames, ctrl_c_works, invoke, next_line, write_video

from vidanom import results
from vidanom.config import CONFIG_NAME
from vidanom.errors import VideoError
from vidanom.events.options import OutputOptions
from vidanom.project import Project
from vidanom.watch import Backoff, Watcher, WatchOptions, watch

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def h264(tmp_path_factory) -> Path:
    """The anomalous clip (48 frames, 1.9 s, an event in frames 24..39) as H.264 in MP4."""
    return write_video(tmp_path_factory.mktemp("rtsp") / "anom.mp4", anomalous_frames(), codec="libx264")


@pytest.fixture(scope="module")
def h264_twice(tmp_path_factory) -> Path:
    """The anomalous clip twice over (96 frames, 3.8 s), as H.264 in MP4: after a reconnect the second
    copy scores as the first did from the start."""
    frames = np.concatenate([anomalous_frames()] * 2)
    return write_video(tmp_path_factory.mktemp("rtsp") / "anom2.mp4", frames, codec="libx264")


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained_project_template: Path) -> Project:
    root = tmp_path_factory.mktemp("rtsp_proj") / "proj"
    shutil.copytree(trained_project_template, root)
    return Project.open(root)


@pytest.fixture(scope="module")
def segments(project: Project, h264: Path) -> list[dict]:
    """What `score` finds in the served file."""
    (result,) = results.score(project, h264, CPU)
    assert result.segments, "the clip should have an anomalous segment"
    return result.segments


def _wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_found(events: list[dict], segs: list[dict], first_frame: int = 0, first_time: float = 0.0) -> None:
    """The events are the segments, counted from first_frame and first_time (after a reconnect)."""
    found = [tuple(e[k] - first_frame for k in EVENT_KEYS) for e in events]
    assert found == [tuple(s[k] for k in EVENT_KEYS) for s in segs]
    for e, s in zip(events, segs):  # the same frames, scored alike (from the clip's start: afresh)
        assert e["peak_score"] == pytest.approx(s["peak_score"], rel=1e-4, abs=1e-4)
        # within a frame: FFmpeg gives the first frame over RTSP no timestamp, so it is timed by its arrival
        assert e["start_time"] - first_time == pytest.approx(s["start_time"], abs=0.05)
        assert e["end_time"] - first_time == pytest.approx(s["end_time"], abs=0.05)


def test_backoff_doubles_to_its_longest_and_restarts_after_a_good_connection():
    backoff = Backoff(1.0, 30.0)
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.connected(5.0)  # lost again soon: the waits go on growing
    assert backoff.next() == 30
    backoff.connected(30.0)
    assert [backoff.next() for _ in range(3)] == [1, 2, 4]


def test_watch_over_rtsp_with_tcp(rtsp, project, h264, segments):
    server = rtsp(h264)
    res = invoke("watch", server.url, "--no-reconnect", "--max-latency", "30", "--device", "cpu", "-p", project.root)
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert_found(events, segments)
    assert all(e["source"] == server.url for e in events)
    assert "stream ended: 48 frames scored" in res.stderr and "0 dropped" in res.stderr


def test_watch_over_rtsp_falls_back_to_udp(rtsp, project, h264, segments):
    server = rtsp(h264, udp_only=True)
    with pytest.raises(VideoError, match="cannot open"):  # the user's choice of transport is kept
        watch(project, server.url, WatchOptions(input_options={"rtsp_transport": "tcp"}), device=CPU)
    events: list[dict] = []
    received: list[float] = []
    status = watch(
        project,
        server.url,
        WatchOptions(max_latency=30.0, reconnect=False),
        on_event=lambda e: (events.append(e), received.append(time.time())),
        device=CPU,
    )
    assert status.frames == 48 and status.gaps == 0
    assert_found(events, segments)
    for e, when in zip(events, received):  # the wall-clock end: when the frame that ended it came, just before
        end = datetime.fromisoformat(e["end"]).timestamp()
        assert end <= when < end + 0.5, (e["end"], when)


def test_watch_reconnects_when_the_server_restarts(rtsp, project, h264_twice, segments):
    server = rtsp(h264_twice)
    events: list[dict] = []
    gaps: list[dict] = []
    states: list[str] = []
    watcher = Watcher(
        project,
        server.url,
        WatchOptions(max_latency=30.0, backoff=(0.5, 4.0)),
        device=CPU,
        on_event=events.append,
        on_gap=gaps.append,
        on_status=lambda s: states.append(s.state),
    )
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(status=watcher.run()), daemon=True)
    thread.start()
    try:
        _wait_for(lambda: events or "status" in outcome, 30, "the first event")
        server.kill()  # mid-stream: the clip's second pass has not come
        server.start()  # on the same port
        _wait_for(lambda: len(events) >= 2 or "status" in outcome, 30, "the event after the reconnect")
    finally:
        watcher.stop()
        thread.join(timeout=10)
    assert not thread.is_alive(), "stop() should end run()"
    status = outcome["status"]
    assert status.interrupted and status.gaps == 1 and status.state == "ended"
    assert "reconnecting" in states
    (gap,) = gaps
    assert gap["from_frame"] < gap["to_frame"] and gap["from_time"] < gap["to_time"]
    assert 0 < gap["gap"] < 10 and gap["attempts"] >= 1 and gap["from"] < gap["to"]
    assert gap["source"] == server.url and gap["reason"]
    # before the gap: the first pass; after it the clip from its start, scored afresh
    assert_found(events[:1], segments)
    assert events[0]["end_frame"] <= gap["from_frame"] + 1
    assert_found(events[1:2], segments, gap["to_frame"], gap["to_time"])


def test_cli_prints_the_gap_and_ctrl_c_ends_it_while_reconnecting(rtsp, project, h264):
    server = rtsp(h264)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDANOM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vidanom",
            "watch",
            server.url,
            "--max-latency",
            "30",
            "--device",
            "cpu",
            "-p",
            str(project.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=ctrl_c_works,
    )
    try:
        assert next_line(proc, proc.stderr, 60).startswith("watching ")
        lines = [json.loads(next_line(proc, proc.stdout, 30)) for _ in range(3)]  # the event, the loss, the gap
        assert [line["kind"] for line in lines] == ["event", "health", "health"], lines
        assert lines[1]["state"] == "down" and lines[1]["reason"] == "the stream ended"
        assert lines[1]["from_frame"] == lines[2]["from_frame"] == 47  # the clip's last frame
        assert lines[2]["state"] == "back" and lines[2]["down_seconds"] == lines[2]["gap"]
        assert lines[2]["reason"] == "the stream ended" and lines[2]["to_frame"] > lines[0]["end_frame"]
        assert next_line(proc, proc.stderr, 10).startswith("stream lost (the stream ended); reconnecting")
        assert next_line(proc, proc.stderr, 10).startswith("stream back after ")
        server.kill()
        assert next_line(proc, proc.stderr, 30).startswith("stream lost (")  # the second pass broke off
        time.sleep(0.3)  # waiting to reconnect
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and stderr.startswith("stopped: ") and "1 gap(s)" in stderr


def test_a_stalled_stream_is_reconnected(rtsp, tmp_path, trained_project_template, h264_twice):
    root = shutil.copytree(trained_project_template, tmp_path / "proj")
    cfg = json.loads((root / CONFIG_NAME).read_text())
    cfg["frames"]["decode_timeout"] = 1.0
    (root / CONFIG_NAME).write_text(json.dumps(cfg))
    server = rtsp(h264_twice)
    gaps: list[dict] = []
    reasons: list[str] = []
    watcher = Watcher(
        Project.open(root),
        server.url,
        WatchOptions(max_latency=30.0, backoff=(0.2, 1.0)),
        device=CPU,
        on_gap=gaps.append,
        on_status=lambda s: reasons.append(s.reason),
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: watcher.status.frames > 10, 30, "frames")
        server.proc.send_signal(signal.SIGSTOP)  # the server hangs: no more packets, no end
        _wait_for(lambda: watcher.status.state == "reconnecting", 15, "the stall to be noticed")
        server.proc.send_signal(signal.SIGCONT)
        _wait_for(lambda: gaps, 20, "the stream to come back")
    finally:
        watcher.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    (gap,) = gaps
    assert gap["reason"].endswith("(frames.decode_timeout)") and gap["reason"] in reasons, gap
    assert 1.0 <= gap["gap"] < 15


def test_an_events_clip_over_rtsp_is_the_cameras_own_h264(rtsp, project, tmp_path):
    served = write_video(tmp_path / "gop.mp4", anomalous_frames(), codec="libx264", gop=10)  # keyframes 0.4 s apart
    server = rtsp(served)
    events: list[dict] = []
    outputs = OutputOptions(clips=tmp_path / "clips", pre=0.5, post=0.2)
    status = watch(project, server.url, WatchOptions(max_latency=30.0, reconnect=False), on_event=events.append,
                   device=CPU, outputs=outputs)  # fmt: skip
    (e,) = events
    assert e["clip_mode"] == "remux" and status.outputs["clips"]["written"] == 1
    with av.open(e["clip"]) as clip:
        assert clip.streams.video[0].codec_context.name == "h264"
        n = sum(1 for _ in clip.decode(video=0))
    # from the keyframe before start - pre (over RTSP the first keyframe has no timestamps: the second, at 0.4 s)
    assert e["start_time"] - 0.5 - 0.4 - 0.05 < e["clip_start_time"] <= e["start_time"] - 0.5 + 0.05
    assert e["end_time"] + 0.2 - 0.05 <= e["clip_end_time"] <= e["end_time"] + 0.2 + 0.04 + 0.05
    assert n / 25 == pytest.approx(e["clip_end_time"] - e["clip_start_time"], abs=0.05)
    assert Path(e["snapshot"]).is_file()
