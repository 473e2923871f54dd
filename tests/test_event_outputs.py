"""Event outputs of `watch`: clips cut from the camera's own packets (remuxed where the codec allows),
snapshots, a command, a webhook (also one that hangs), MQTT on a real broker (Debian's mosquitto, on
loopback; the MQTT tests skip and say so where it is not installed), and health events."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import REPEAT, Subscriber, anomalous_frames, invoke, next_line, write_video
from PIL import Image

from vidanom.errors import OutputError
from vidanom.events import webhook
from vidanom.events.clips import nearest_frame
from vidanom.events.options import OutputOptions
from vidanom.project import Project
from vidanom.watch import Watcher, WatchOptions

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
GOP = 0.4  # seconds between keyframes of the clips made here
FRAME = 1 / 25


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    """The anomalous stretch three times over (168 frames, 6.72 s, three events), H.264 with a keyframe every 0.4 s."""
    return write_video(
        tmp_path_factory.mktemp("events") / "three.mp4",
        anomalous_frames(3),
        codec="libx264",
        gop=10,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained_project_template: Path) -> Project:
    root = tmp_path_factory.mktemp("events_proj") / "proj"
    shutil.copytree(trained_project_template, root)
    return Project.open(root)


def run(project: Project, source: Path | str, outputs: OutputOptions, **kwargs) -> tuple[list[dict], object]:
    events: list[dict] = []
    options = kwargs.pop("options", WatchOptions())
    watcher = Watcher(project, str(source), options, device=CPU, outputs=outputs, **kwargs)
    watcher.on_event = kwargs.get("on_event", events.append)
    return events, watcher.run()


def packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def test_an_events_clip_is_the_sources_packets_from_the_keyframe_before_its_pre_roll(project, three, tmp_path):
    ready = []
    outputs = OutputOptions(clips=tmp_path / "clips", pre=0.5, post=0.3)
    watcher = Watcher(project, str(three), WatchOptions(), device=CPU, outputs=outputs, camera="gate")
    watcher.on_event = lambda e: ready.append((e, Path(e["clip"]).is_file(), Path(e["snapshot"]).is_file()))
    status = watcher.run()
    assert len(ready) == 3 and all(clip and snap for _, clip, snap in ready)  # written before the event is told
    source = set(packets(three))
    for e, _, _ in ready:
        clip = Path(e["clip"])
        assert clip.parent == tmp_path / "clips" / "gate" and e["clip_mode"] == "remux"
        with av.open(str(clip)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            n = sum(1 for _ in c.decode(video=0))
        assert set(packets(clip)) <= source  # the camera's own bytes: not encoded again
        # from the keyframe at or before start - pre, to the first frame past end + post (or the stream's end)
        end = min(e["end_time"] + 0.3, 3 * REPEAT * FRAME)
        assert e["start_time"] - 0.5 - GOP < e["clip_start_time"] <= e["start_time"] - 0.5 + 1e-6
        assert end - 1e-6 <= e["clip_end_time"] <= end + FRAME + 1e-6
        assert n * FRAME == pytest.approx(e["clip_end_time"] - e["clip_start_time"], abs=1e-3)
        snap = np.asarray(Image.open(e["snapshot"]))
        plain = nearest_frame(clip, e["peak_time"] - e["clip_start_time"])
        assert snap.shape == plain.shape == (48, 64, 3)
        assert np.abs(snap.astype(int) - plain).mean() > 5  # the heatmap is drawn on the peak frame
    assert status.outputs["clips"]["written"] == 3 and status.outputs["clips"]["failed"] == 0


def test_every_event_of_a_long_watch_gets_its_clip(project, tmp_path):
    # more events than clips may be written at once (MAX_RECORDINGS): finished ones no longer count
    five = write_video(tmp_path / "five.mp4", anomalous_frames(5), codec="libx264", gop=10)
    events, status = run(project, five, OutputOptions(clips=tmp_path / "clips", pre=0.3, post=0.2))
    assert [e["event"] for e in events] == [1, 2, 3, 4, 5]  # in order, whichever clip was done first
    assert all(e["clip"] and Path(e["clip"]).is_file() for e in events)
    assert status.outputs["clips"]["written"] == 5 and status.outputs["clips"]["skipped"] == 0


def test_a_codec_mp4_cannot_hold_is_encoded_again(project, tmp_path):
    raw = write_video(tmp_path / "raw.avi", anomalous_frames(), codec="rawvideo")
    events, status = run(project, raw, OutputOptions(clips=tmp_path / "clips", pre=0.3, post=0.2))
    (e,) = events
    assert e["clip_mode"] == "transcode" and Path(e["clip"]).is_file()
    with av.open(e["clip"]) as c:
        assert c.streams.video[0].codec_context.name in ("h264", "mpeg4")
        assert sum(1 for _ in c.decode(video=0)) * FRAME == pytest.approx(
            e["clip_end_time"] - e["clip_start_time"], abs=1e-3
        )
    assert e["start_time"] - 0.3 - FRAME < e["clip_start_time"] <= e["start_time"] - 0.3  # each raw frame is a keyframe


def test_a_clip_stops_at_its_cap(project, three, tmp_path):
    events, _ = run(project, three, OutputOptions(clips=tmp_path / "clips", pre=0.2, post=0.2, max_clip=0.6))
    assert len(events) == 3
    for e in events:
        assert e["clip_capped"] and e["clip_end_time"] - e["clip_start_time"] <= 0.6 + FRAME + 1e-6
        assert e["duration"] + 0.4 > 0.6  # the event with its pre and post roll would be longer


def test_the_command_gets_the_same_json_as_stdout_and_failures_are_logged(project, three, tmp_path):
    log = tmp_path / "got.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        "event = json.load(sys.stdin)\n"
        "event['env_clip'] = os.environ['VIDANOM_CLIP']\n"
        f"open({str(log)!r}, 'a').write(json.dumps(event) + '\\n')\n"
    )
    clips = tmp_path / "clips"
    res = invoke("watch", three, "--clips", clips, "--pre", "0.5", "--post", "0.3", "--name", "door",
                 "--exec", f"{sys.executable} {script}", "--device", "cpu", "-p", project.root)  # fmt: skip
    assert res.exit_code == 0, res.output
    printed = [json.loads(line) for line in res.stdout.splitlines()]
    got = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(printed) == 3 and [{k: v for k, v in g.items() if k != "env_clip"} for g in got] == printed
    assert all(g["env_clip"] == g["clip"] and g["camera"] == "door" for g in got)
    assert "outputs: 3 clip(s)" in res.stderr and "exec 3 sent" in res.stderr

    started = time.monotonic()
    res = invoke("watch", three, "--exec", "echo broken >&2; exit 3", "--device", "cpu", "-p", project.root)
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "warning: exec: 'echo broken >&2; exit 3' exited with 3: broken" in res.stderr
    assert "exec 0 sent, 3 failed" in res.stderr and time.monotonic() - started < 30


def test_the_webhook_is_retried_until_it_answers(project, three, hook, monkeypatch):
    monkeypatch.setattr(webhook, "BACKOFF", (0.05, 0.2))
    endpoint = hook(lambda n: 503 if n <= 2 else 200)  # down for the first two requests
    events, status = run(project, three, OutputOptions(webhook=endpoint.url))
    assert len(events) == 3 and endpoint.bodies == events  # every event, in order, the same JSON
    stats = status.outputs["webhook"]
    assert stats["sent"] == 3 and stats["retries"] == 2 and stats["dropped"] == 0 and "HTTP 503" in stats["last_error"]


def test_a_hanging_webhook_never_stalls_scoring_and_its_drops_are_counted(project, three, hook, monkeypatch):
    monkeypatch.setattr(webhook, "REQUEST_TIMEOUT", 2.0)
    endpoint = hook(lambda n: 0)  # accepts, never answers
    watcher = Watcher(project, str(three), WatchOptions(), device=CPU, outputs=OutputOptions(
        webhook=endpoint.url, queue=1, drain=0.3))  # fmt: skip
    latencies: list[float] = []
    watcher.on_status = lambda s: latencies.append(s.latency)
    started = time.monotonic()
    status = watcher.run()
    assert time.monotonic() - started < 2.0  # one POST in hand hangs for 2 s: the scoring did not wait for it
    assert status.frames == 3 * REPEAT and status.events == 3 and status.dropped == 0
    stats = status.outputs["webhook"]
    # the first in hand (hanging), the second dropped when the third came (a queue of 1), those two at the end
    assert stats["sent"] == 0 and stats["dropped"] == 3 and endpoint.requests == 1


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_stream_that_drops_and_returns_is_told_through_the_outputs(project, three, hook):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(three.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = hook()
    url = f"http://127.0.0.1:{server.server_address[1]}/{three.name}"
    watcher = Watcher(project, url, WatchOptions(max_latency=30.0, backoff=(0.2, 1.0)), device=CPU,
                      outputs=OutputOptions(webhook=endpoint.url), camera="yard")  # fmt: skip
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not any(b.get("state") == "back" for b in endpoint.bodies) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
        thread.join(timeout=15)
        server.shutdown()
        server.server_close()
    health = [b for b in endpoint.bodies if b["kind"] == "health"]
    assert [h["state"] for h in health[:2]] == ["down", "back"], endpoint.bodies
    down, back = health[:2]
    assert down["camera"] == back["camera"] == "yard" and down["reason"] == "the stream ended"
    assert down["from_frame"] == 3 * REPEAT - 1 and back["down_seconds"] == back["gap"] > 0
    assert [b["event"] for b in endpoint.bodies if b["kind"] == "event"][:3] == [1, 2, 3]


def test_bad_outputs_are_one_line_errors(project, three, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args, message in (
        (("--clips", blocker), "cannot create the clips folder"),
        (("--webhook", "127.0.0.1:8080/hook"), "--webhook takes an http:// or https:// URL"),
        (("--mqtt", "tcp://127.0.0.1"), "--mqtt takes mqtt://HOST"),
        (("--keep-size", "lots"), "cannot read 'lots' as a size"),
        (("--clips", tmp_path / "c", "--pre", "100", "--post", "30"), "--max-clip"),
        (("--mqtt", "mqtt://127.0.0.1:9", "--strict-outputs"), "is not reachable now"),
    ):
        res = invoke("watch", three, *args, "--device", "cpu", "-p", project.root)
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(OutputError, match="not reachable"):
        Watcher(project, str(three), outputs=OutputOptions(webhook="http://127.0.0.1:9/x", strict=True))
    # without --strict-outputs: a warning, and the events are scored and printed all the same
    res = invoke("watch", three, "--webhook", "http://127.0.0.1:9/x", "--device", "cpu", "-p", project.root)
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3
    assert "warning: the webhook http://127.0.0.1:9/x is not reachable now" in res.stderr
    assert "webhook 0 sent, 3 dropped" in res.stderr


# -- MQTT, on a real broker --------------------------------------------------------------------------


def test_mqtt_topics_per_camera_with_home_assistant_discovery(project, three, broker):
    sub = Subscriber(broker.port, ["vidanom/#", "homeassistant/#"])
    try:
        sub.wait(lambda: sub.client.is_connected(), 10, "the subscriber")
        time.sleep(0.2)
        events, status = run(project, three, OutputOptions(mqtt=broker.url, ha_discovery=True), camera="front door")
        sub.wait(lambda: len(sub.on("vidanom/front_door/event")) == 3, 10, "three events")
        sub.wait(lambda: sub.on("vidanom/front_door/availability")[-1:] == ["offline"], 10, "offline")
    finally:
        sub.close()
    assert [json.loads(m) for m in sub.on("vidanom/front_door/event")] == events
    (config,) = [json.loads(m) for m in sub.on("homeassistant/binary_sensor/vidanom_front_door/anomaly/config")]
    assert config["state_topic"] == "vidanom/front_door/state" and config["unique_id"] == "vidanom_front_door_anomaly"
    assert config["availability_topic"] == "vidanom/front_door/availability"
    assert config["device"]["name"] == "front door"
    states = sub.on("vidanom/front_door/state")
    assert states.count("ON") == 3 and states[-1] == "OFF"  # ON while each event went on
    assert sub.on("vidanom/front_door/availability")[-2:] == ["online", "offline"]
    assert status.outputs["mqtt"]["sent"] == 3 and status.outputs["mqtt"]["dropped"] == 0


def test_events_reach_mqtt_after_the_broker_comes_back(project, three, broker):
    sub = Subscriber(broker.port, ["vidanom/#"])
    sub.wait(lambda: sub.client.is_connected(), 10, "the subscriber")
    time.sleep(1.5)  # the broker saves the subscriber's persistent session (autosave_interval 1)
    latencies: list[float] = []
    watcher = Watcher(project, str(three), WatchOptions(realtime=True), device=CPU,
                      outputs=OutputOptions(mqtt=broker.url, drain=15.0), camera="gate")  # fmt: skip
    watcher.on_status = lambda s: latencies.append(s.latency)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(status=watcher.run()), daemon=True)
    thread.start()
    try:
        sub.wait(lambda: sub.on("vidanom/gate/event"), 15, "the first event")
        broker.stop()  # mid-run: the second and third events come while it is away
        time.sleep(2.0)
        broker.start()
        thread.join(timeout=40)
        sub.wait(lambda: len(sub.on("vidanom/gate/event")) >= 3, 20, "the events after the broker came back")
    finally:
        watcher.stop()
        sub.close()
    status = outcome["status"]
    assert [json.loads(m)["event"] for m in sub.on("vidanom/gate/event")] == [1, 2, 3]
    assert status.dropped == 0 and max(latencies) < 1.0  # the scoring went on as before
    assert status.outputs["mqtt"]["dropped"] == 0 and status.outputs["mqtt"]["connects"] == 2


def test_the_brokers_last_will_says_offline_when_the_watch_dies(project, three, broker, tmp_path):
    long_clip = three.with_name("long.mp4")
    if not long_clip.exists():
        shutil.copy(three, long_clip)
    sub = Subscriber(broker.port, ["vidanom/#"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDANOM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidanom", "watch", str(long_clip), "--realtime", "--reconnect", "--name", "gate",
         "--mqtt", broker.url, "--device", "cpu", "-p", str(project.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert next_line(proc, proc.stderr, 60).startswith("watching ")
        sub.wait(lambda: sub.on("vidanom/gate/availability")[-1:] == ["online"], 15, "online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        sub.wait(lambda: sub.on("vidanom/gate/availability")[-1:] == ["offline"], 15, "the last will")
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
        sub.close()
