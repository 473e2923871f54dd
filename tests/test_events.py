"""The parts of the event outputs that need no model: the packet ring's bounds, the cooldown, the
bounded notification queues, the options and the manifest's tables, clip retention."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import square_frames

from vidanom.errors import OutputError
from vidanom.events.clips import prune
from vidanom.events.notify import Cooldown, Sender
from vidanom.events.options import OutputOptions, check, mqtt_address, parse_size
from vidanom.events.ring import PacketRing
from vidanom.fleet.manifest import read_manifest


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory) -> Path:
    """12 s at 25 fps of a moving square, H.264 with a keyframe every 10 frames (0.4 s)."""
    path = tmp_path_factory.mktemp("ring") / "gop.mp4"
    frames, _ = square_frames(300, 2, 16, 1.5, 10)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast", "g": "10", "keyint_min": "10"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    return path


def feed(ring: PacketRing, video: Path, check_each=lambda ring, t: None) -> None:
    """Hand the ring a file's packets as the decoder would, frame times equal to the PTS."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        ring.opened(stream)
        ring.origin(0.0)
        for packet in container.demux(stream):
            if packet.size:
                ring.packet(packet)
                t = float(packet.pts * stream.time_base)
                ring.frame(t, t)
                check_each(ring, t)
        ring.closed()


def test_the_ring_keeps_its_seconds_from_a_keyframe(gop_video: Path):
    def check_each(ring: PacketRing, newest: float) -> None:
        (seg,) = ring.segments
        head = seg.packets[0]
        assert head.key and head.startable  # a clip can start at the oldest packet kept
        if newest >= 2.0:  # it covers `keep` seconds, and less than a group of pictures more
            assert newest - 2.0 - 0.4 < head.t <= newest - 2.0 + 1e-9

    ring = PacketRing(keep=2.0, max_bytes=2**30)
    feed(ring, gop_video, check_each)
    seg, key = ring.start(10.5) or (None, None)
    assert key is not None and key.key and key.t == pytest.approx(10.4)  # the keyframe at or before 10.5 s
    assert ring.start(5.0)[1].t == pytest.approx(9.6)  # no longer kept: from the oldest keyframe
    packets, closed = ring.read(seg, key.seq, 0.01)
    assert closed and packets[0] is key and packets[-1].t == pytest.approx(299 / 25)


def test_the_ring_keeps_what_the_scorer_has_not_reached(gop_video: Path):
    ring = PacketRing(keep=2.0, max_bytes=2**30)
    ring.scored_until(3.0)  # a file is decoded ahead of the scoring: the event may still start at 3 s
    feed(ring, gop_video)
    (seg,) = ring.segments
    assert 0.6 < seg.packets[0].t <= 1.0 and ring.start(1.5)[1].t == pytest.approx(1.2)


def test_the_ring_never_holds_more_than_its_bytes(gop_video: Path):
    cap = 12_000  # a few seconds of this clip, far less than `keep`
    seen: list[int] = []
    ring = PacketRing(keep=60.0, max_bytes=cap)
    feed(ring, gop_video, lambda r, t: seen.append(r.bytes))
    whole = sum(p.size for p in av.open(str(gop_video)).demux(video=0) if p.size)
    assert whole > 3 * cap and max(seen) <= cap and ring.peak_bytes <= cap
    (seg,) = ring.segments
    assert seg.packets[0].key  # what is left still starts at a keyframe


def test_a_new_connection_starts_a_new_segment_and_keeps_the_one_before(gop_video: Path):
    ring = PacketRing(keep=1.0, max_bytes=2**30)
    feed(ring, gop_video)
    with av.open(str(gop_video)) as container:  # the second connection: at 20 s of the watch's timeline
        stream = container.streams.video[0]
        ring.opened(stream)
        ring.origin(20.0)
        for packet in list(container.demux(stream))[:30]:
            if packet.size:
                ring.packet(packet)
                ring.frame(float(packet.pts * stream.time_base), float(packet.pts * stream.time_base))
    old, new = ring.segments
    assert old.closed and not new.closed
    assert ring.start(11.5)[0] is old  # a clip of an event in the first connection comes from it
    seg, key = ring.start(20.5)
    assert seg is new and seg.watch_time(key.t) == pytest.approx(20.4)


def test_cooldown_sends_the_first_at_once_and_merges_the_next():
    sent: list[dict] = []
    cooldown = Cooldown(0.3, sent.append)

    def event(n: int, start: float, peak: float) -> dict:
        return {"event": n, "start_time": start, "end_time": start + 1, "peak_score": peak}

    cooldown(event(1, 0.0, 5.0))
    assert [e["event"] for e in sent] == [1]
    cooldown(event(2, 1.1, 3.0))  # 0.1 s after the first ended: merged
    cooldown(event(3, 2.2, 9.0))
    assert len(sent) == 1
    time.sleep(0.5)  # the cooldown runs out: one payload for both
    assert len(sent) == 2
    merged = sent[1]
    assert merged["merged"] == 2 and merged["merged_events"] == [2, 3] and merged["peak_score"] == 9.0
    assert (merged["start_time"], merged["end_time"]) == (1.1, 3.2)
    cooldown(event(4, 10.0, 1.0))  # far from the last: at once
    cooldown(event(5, 10.5, 1.0))
    cooldown(event(6, 30.0, 1.0))  # far again: the merged one waiting goes first
    assert [e["event"] for e in sent[2:]] == [4, 5, 6] and cooldown.merged == 1


class _Stuck(Sender):
    """An output whose deliveries wait until released."""

    name = "stuck"

    def __init__(self, queue: int) -> None:
        self.release, self.attempts = threading.Event(), []
        super().__init__(queue)

    def attempt(self, payload: dict) -> bool | None:
        self.attempts.append(payload["n"])
        return self.release.wait(10)


def test_a_full_queue_drops_the_oldest_and_counts_them():
    sender = _Stuck(queue=3)
    sender.send({"n": 0})
    deadline = time.monotonic() + 5
    while not sender.attempts and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    for n in range(1, 10):
        sender.send({"n": n})
    assert time.monotonic() - started < 0.5  # sending never waits for the output
    time.sleep(0.1)
    assert sender.attempts == [0] and sender.pending == 4 and sender.dropped == 6  # 0 in hand, 7, 8, 9 queued
    sender.release.set()
    sender.close(5.0)
    assert sender.attempts == [0, 7, 8, 9] and sender.sent == 4 and sender.dropped == 6


def test_what_an_output_still_holds_after_its_drain_time_is_dropped():
    sender = _Stuck(queue=5)
    for n in range(3):
        sender.send({"n": n})
    started = time.monotonic()
    sender.close(0.3)
    assert time.monotonic() - started < 1.0
    assert sender.sent == 0 and sender.dropped == 3 and sender.stats()["pending"] == 0
    sender.release.set()


def test_options_refuse_what_can_never_work_in_one_line():
    assert parse_size("500M") == 500 * 2**20 and parse_size("1.5GB") == int(1.5 * 2**30) and parse_size(4096) == 4096
    assert mqtt_address("mqtt://u:p@127.0.0.1:1884/home/cams") == ("127.0.0.1", 1884, "home/cams", "u", "p")
    assert mqtt_address("mqtt://127.0.0.1")[1:3] == (1883, "vidanom")
    for bad, match in (
        (OutputOptions(webhook="ftp://127.0.0.1/x"), "http:// or https://"),
        (OutputOptions(webhook="http://"), "http:// or https://"),
        (OutputOptions(mqtt="mqtts://127.0.0.1"), "TLS, mqtts://, is not supported"),
        (OutputOptions(mqtt="mqtt://127.0.0.1/a/#"), "may not hold"),
        (OutputOptions(ha_discovery=True), "give --mqtt too"),
        (OutputOptions(pre=60, post=60), "--max-clip"),
        (OutputOptions(pre=-1), "0 or more"),
        (OutputOptions(command="'unclosed"), "not a command line"),
    ):
        with pytest.raises(OutputError, match=match):
            check(bad)
    with pytest.raises(OutputError, match="as a size"):
        parse_size("lots")
    assert "no program" in check(OutputOptions(command="no-such-program-here --x"))[0]
    assert check(OutputOptions(command="cat > /dev/null")) == []


def test_the_manifest_sets_outputs_for_the_fleet_and_each_camera(tmp_path: Path):
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[watch]\nclips = "clips"\ncooldown = 30\nmqtt = "mqtt://127.0.0.1"\n'
        '[cameras.gate]\nproject = "p/gate"\nwebhook = "http://127.0.0.1:9/gate"\ncooldown = 5\n'
        '[cameras.door]\nproject = "p/door"\npre = "ten"\n'
        '[cameras.yard]\nproject = "p/yard"\nkeep_size = "2G"\nexec = "true"\n'
    )
    manifest = read_manifest(path)
    assert [c.name for c in manifest.cameras] == ["gate", "yard"]
    assert manifest.problems == ["camera door: pre must be a number"]
    gate, yard = manifest.cameras
    o = manifest.outputs_of(gate, {"cooldown": 60.0, "webhook": "http://127.0.0.1:9/all", "pre": 2.0})
    # the camera's own keys win over fleet watch's options, which win over [watch]
    assert o.clips == tmp_path / "clips" and o.mqtt == "mqtt://127.0.0.1"
    assert (o.cooldown, o.webhook, o.pre) == (5.0, "http://127.0.0.1:9/gate", 2.0)
    y = manifest.outputs_of(yard)
    assert (y.keep_bytes, y.command, y.cooldown, y.webhook) == (2 * 2**30, "true", 30.0, None)
    path.write_text('[watch]\nwebhooks = "x"\n[cameras.gate]\nproject = "p/gate"\n')
    assert read_manifest(path).problems == ["[watch]: unknown key 'webhooks'"]


def test_retention_deletes_the_oldest_clips_first_and_nothing_else(tmp_path: Path):
    now = time.time()
    for i, days in enumerate([10, 5, 2, 1]):  # four clips (with snapshots), 1000 + 100 bytes each
        for suffix, size in ((".mp4", 1000), (".jpg", 100)):
            path = tmp_path / f"gate-2026120{i}-120000-e{i}{suffix}"
            path.write_bytes(b"x" * size)
            os.utime(path, (now - days * 86400, now - days * 86400))
    mine = tmp_path / "notes.mp4"  # not named as clips are: never touched
    mine.write_bytes(b"x" * 5000)
    os.utime(mine, (now - 100 * 86400,) * 2)
    assert prune(tmp_path, keep_days=7, keep_bytes=None, now=now) == 2  # the 10-day-old clip and snapshot
    assert prune(tmp_path, keep_days=None, keep_bytes=2300, now=now) == 2  # 3300 bytes left: the oldest goes
    left = sorted(p.name for p in tmp_path.iterdir())
    kept = ["gate-20261202-120000-e2.jpg", "gate-20261202-120000-e2.mp4", "gate-20261203-120000-e3.jpg"]
    assert left == [*kept, "gate-20261203-120000-e3.mp4", "notes.mp4"]


def test_a_clip_asked_for_before_its_first_keyframe_waits_for_it(gop_video: Path, tmp_path: Path):
    from vidanom.events.clips import Recording

    ring, done = PacketRing(keep=20.0, max_bytes=2**30), threading.Event()
    recording = Recording(ring, 0.5, tmp_path / "c.mp4", pre=0.2, post=0.1, max_clip=5.0, done=lambda r: done.set())
    recording.finish(1.0, None)
    time.sleep(0.3)  # nothing read yet (over RTSP: the first keyframe has no timestamps)
    feed(ring, gop_video)
    assert done.wait(10)
    r = recording.result
    assert r.error is None and r.mode == "remux" and (r.start, r.end) == (0.0, pytest.approx(1.12))
