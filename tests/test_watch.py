"""`vidanom watch`: live scoring of a file, a growing file, an HTTP stream over loopback, and Ctrl-C."""

from __future__ import annotations

import functools
import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EVENT_KEYS, anomalous_frames, ctrl_c_works, invoke, write_video

from vidanom import results
from vidanom.project import Project
from vidanom.scoring import segments
from vidanom.watch import EventTracker, Watcher, WatchOptions, watch

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained_project_template: Path) -> Project:
    root = tmp_path_factory.mktemp("watch") / "proj"
    shutil.copytree(trained_project_template, root)
    return Project.open(root)


def scored_segments(project: Project, video: Path) -> list[dict]:
    (result,) = results.score(project, video, CPU)
    return result.segments


def assert_same_events(events: list[dict], segs: list[dict]) -> None:
    assert segs, "the clip should have an anomalous segment"
    assert [tuple(e[k] for k in EVENT_KEYS) for e in events] == [tuple(s[k] for k in EVENT_KEYS) for s in segs]
    for e, s in zip(events, segs):
        assert e["peak_score"] == pytest.approx(s["peak_score"], rel=1e-5, abs=1e-5)
        assert (e["start_time"], e["end_time"]) == (s["start_time"], s["end_time"])
        assert e["peak_time"] == pytest.approx(e["peak_frame"] / 25, abs=1e-3)


def test_event_tracker_finds_what_segments_finds():
    rng = np.random.default_rng(3)
    scores = np.convolve(rng.normal(size=2000), np.ones(4) / 4, "same").astype(np.float32)
    tracker, events, start = EventTracker(0.3, 3, 0.04), [], 0
    while start < len(scores):  # fed in batches of random sizes
        n = int(rng.integers(1, 40))
        events += tracker.update(np.arange(start, min(start + n, len(scores))), scores[start : start + n])
        start += n
    events += tracker.finish(len(scores))
    expected = segments(scores > 0.3, scores, 3)
    assert len(expected) > 20
    assert [(e["start_frame"], e["end_frame"], e["peak_frame"]) for e in events] == [
        (s.start, s.end, s.peak_frame) for s in expected
    ]
    assert [e["peak_score"] for e in events] == pytest.approx([s.peak_score for s in expected])


def test_watching_a_file_reports_the_events_score_finds(project, clips):
    res = invoke("watch", clips.anomalous, "--device", "cpu", "-p", project.root)
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert_same_events(events, scored_segments(project, clips.anomalous))
    assert f"{clips.n_frames} frames scored" in res.stderr and "0 dropped" in res.stderr
    assert all(e["source"] == str(clips.anomalous) and e["model_version"] == "v0001" for e in events)
    # one payload for every output: its kind, the camera (from the file's name), and no clip without --clips
    assert all(e["kind"] == "event" and e["camera"] == "anom" and e["clip"] is None for e in events)
    assert all(e["x_threshold"] == pytest.approx(e["peak_score"] / e["threshold"], abs=1e-3) for e in events)


def test_a_slow_scorer_drops_frames_to_stay_in_time(project, clips):
    # played in real time (25 fps), scored 0.2 s late per batch: frames that waited over 0.1 s are dropped
    waits = []
    status = watch(
        project,
        str(clips.anomalous),
        WatchOptions(realtime=True, max_latency=0.1),
        on_status=lambda s: waits.append(s.latency),
        device=CPU,
        before_batch=lambda n: time.sleep(0.2),
    )
    assert status.dropped > clips.n_frames // 3 and status.frames + status.dropped == clips.n_frames
    assert max(waits) < 0.1 + 0.2 + 0.15  # the batch's oldest frame: its wait, plus the slow scoring
    assert status.seconds < clips.n_frames / 25 + 1.0  # it kept up instead of drifting behind


def test_follow_reads_a_file_while_it_is_written(project, tmp_path):
    whole = write_video(tmp_path / "whole.ts", anomalous_frames())  # MPEG-TS: readable while it grows
    data = whole.read_bytes()
    growing = tmp_path / "growing.ts"
    growing.write_bytes(b"")
    written = threading.Event()

    def writer() -> None:
        with open(growing, "ab") as f:
            for i in range(0, len(data), 4096):
                f.write(data[i : i + 4096])
                f.flush()
                time.sleep(0.05)
        written.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen_early, events = [], []
    status = watch(
        project,
        str(growing),
        WatchOptions(follow=1.0),
        on_event=events.append,
        on_status=lambda s: seen_early.append(not written.is_set()),
        device=CPU,
    )
    thread.join()
    assert status.frames == len(anomalous_frames()) and status.dropped == 0
    assert seen_early[0], "the first frames should be scored before the file is complete"
    assert_same_events(events, scored_segments(project, whole))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_watching_an_http_stream(project, clips):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(clips.anomalous.parent))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clips.anomalous.name}"
        events = []
        status = watch(
            project, url, WatchOptions(max_latency=30.0, reconnect=False), on_event=events.append, device=CPU
        )
    finally:
        server.shutdown()
    assert status.frames == clips.n_frames and status.dropped == 0
    assert all(e["source"] == url for e in events)
    assert_same_events(events, scored_segments(project, clips.anomalous))


def test_an_http_stream_that_ends_is_opened_again_until_stopped(project, clips):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(clips.anomalous.parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{clips.anomalous.name}"
    events, gaps = [], []
    watcher = Watcher(
        project,
        url,
        WatchOptions(max_latency=30.0, backoff=(0.2, 5.0)),
        device=CPU,
        on_event=events.append,
        on_gap=gaps.append,
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(events) < 2 and time.monotonic() < deadline:  # the clip, then the clip again
            time.sleep(0.05)
        server.shutdown()
        server.server_close()  # now refused
        while watcher.status.attempts < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.status.state == "reconnecting" and watcher.status.reason  # refused, or reset
        stopped = time.monotonic()
        watcher.stop()  # while it waits to reconnect
        thread.join(timeout=5)
        assert not thread.is_alive() and time.monotonic() - stopped < 1.0
    finally:
        watcher.stop()
        server.server_close()
    status = watcher.status
    assert status.interrupted and status.state == "ended" and status.gaps == len(gaps) >= 1
    gap = gaps[0]
    assert gap["reason"] == "the stream ended" and gap["attempts"] == 1 and gap["source"] == url
    # frame numbers and times go on; the second pass is scored afresh, so just as the first
    assert gap["from_frame"] == clips.n_frames - 1 and gap["to_frame"] > gap["from_frame"]
    assert gap["to_time"] > gap["from_time"]
    first, again = events[0], events[1]
    assert [again[k] - gap["to_frame"] for k in EVENT_KEYS] == [first[k] for k in EVENT_KEYS]
    assert again["peak_score"] == pytest.approx(first["peak_score"], rel=1e-5)
    assert again["start_time"] - gap["to_time"] == pytest.approx(first["start_time"], abs=1e-3)


def test_ctrl_c_ends_watch_cleanly_with_a_summary(project, tmp_path):
    long_clip = write_video(tmp_path / "long.mp4", anomalous_frames(12))  # 27 s
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDANOM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vidanom",
            "watch",
            str(long_clip),
            "--realtime",
            "--device",
            "cpu",
            "-p",
            str(project.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=ctrl_c_works,
    )
    try:
        first = _line(proc, proc.stderr)
        assert first.startswith("watching ") and "Ctrl-C to stop" in first
        event = json.loads(_line(proc, proc.stdout))  # the first event, printed as soon as it ends
        assert proc.poll() is None and event["event"] == 1
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and stderr.startswith("stopped: ") and "frames scored" in stderr
    scored = int(stderr.split("stopped: ")[1].split(" frames")[0])
    assert event["end_frame"] <= scored < 12 * 48  # it stopped midway
    assert all(json.loads(line)["end_frame"] <= scored for line in stdout.splitlines())


def _line(proc: subprocess.Popen, pipe) -> str:
    """The next line of a child's pipe, within 60 s, while it runs."""
    deadline = time.monotonic() + 60
    while not select.select([pipe], [], [], 0.2)[0]:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
    return pipe.readline()


def test_watch_errors_are_clean(project, tmp_path, clips):
    for args, message in (
        ((tmp_path / "missing.ts",), "no such file"),
        ((tmp_path,), "is a folder"),
        (("http://127.0.0.1:9/none.ts",), "cannot open"),
    ):
        res = invoke("watch", *args, "-p", project.root)
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output, res.output
    res = invoke("watch", clips.anomalous, "-i", "nonsense", "-p", project.root)
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = invoke("watch", clips.anomalous, "--max-latency", "0", "-p", project.root)
    assert res.exit_code == 2 and "--max-latency" in res.output
    untrained = tmp_path / "untrained"
    assert invoke("init", untrained).exit_code == 0
    res = invoke("watch", clips.anomalous, "-p", untrained)
    assert res.exit_code == 2 and "no trained model" in res.stderr
