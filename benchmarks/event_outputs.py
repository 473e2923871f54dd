"""What event clips and notifications cost a live watch, over RTSP on loopback, and what they deliver.

    python benchmarks/event_outputs.py                       # about 6 minutes on 2 shared cores
    python benchmarks/event_outputs.py --cameras 1 --rounds 1 --faults

The served clip (GStreamer's RTSP server, tests/rtsp_server.py, as benchmarks/live_rtsp.py serves it)
is 720p at 25 fps with a keyframe every second: three copies of a 10 s clip of benchmarks/throughput.py,
each with a big fast shape from its 7th second (an event), so 30 s with three or more events (a
seam between copies may be one more). The project is live_rtsp.py's, trained on the first 10 s of
its own 30 s clip (no intruder there). For each number of cameras, in interleaved rounds (both
settings see the same load from the machine's other work), N servers are watched by N processes
(as N `vidanom watch` commands, or fleet watch's actors, run):
  off   no outputs
  on    --clips (pre 3 s, post 1 s), --webhook to a local collector and --mqtt to a local mosquitto
Per setting: arrival → score latency (median, 99th percentile over every batch of every camera),
frames dropped, and for `on` the events' clips against what was asked (their length minus the
event's plus pre and post: the keyframe before the pre-roll adds up to a second here) and the time
from an event's end (the arrival of the frame that ended it) to the webhook's and MQTT's receipt
(the clip's post-roll included: the payload names the clip, so it waits for it).
--faults: one camera with the webhook hanging for the first 15 s (then answering) and the broker
killed (SIGKILL) at 5 s and started again at 15 s: latency, drops, and what was delivered after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from live_rtsp import Server, Trace, train
from throughput import copy_packets, make_clip

from vidanom.events.options import OutputOptions
from vidanom.project import Project
from vidanom.watch import Watcher, WatchOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Broker, Hook, Subscriber  # noqa: E402 - the tests' loopback broker and endpoint

CPU = torch.device("cpu")


def watch_one(root: Path, url: str, camera: str, outputs: dict | None) -> dict:
    """One camera watched to the end of its stream (in its own process) → what it measured."""
    torch.set_num_threads(1)
    trace, events = Trace(), []
    opts = OutputOptions(**outputs) if outputs else None
    watcher = Watcher(
        Project.open(root),
        url,
        WatchOptions(reconnect=False),
        device=CPU,
        on_status=trace,
        on_event=events.append,
        outputs=opts,
        camera=camera,
    )
    status = watcher.run()
    return {
        "latency": [b[0] for b in trace.batches],
        "frames": status.frames,
        "dropped": status.dropped,
        "events": events,
        "outputs": status.outputs,
    }


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Receipts:
    """When each event (camera, number) reached the webhook collector and the MQTT subscriber."""

    def __init__(self, broker: Broker) -> None:
        self.hook = Hook(self._posted)
        self.webhook: dict[tuple[str, int], float] = {}
        self.mqtt: dict[tuple[str, int], float] = {}
        self.hang_until = 0.0
        self.sub = Subscriber(broker.port, ["vidanom/+/event"])
        self.sub.client.on_message = self._message

    def _posted(self, n: int) -> int:
        return 0 if time.monotonic() < self.hang_until else 200

    def _message(self, client, userdata, msg) -> None:
        payload = json.loads(msg.payload)
        if payload.get("kind") == "event":
            self.mqtt.setdefault(key(payload), time.time())

    def collect(self) -> None:
        for body, when in zip(self.hook.bodies, self.hook.received):
            self.webhook.setdefault(key(body), when)


def key(event: dict) -> tuple[str, int, str]:
    """An event of one run of one camera (its wall-clock start tells the runs apart)."""
    return event["camera"], event["event"], event["start"]


def run_round(project: Project, clip: Path, n: int, outputs: dict | None, work: Path) -> list[dict]:
    servers = [Server(clip) for _ in range(n)]
    try:
        for server in servers:
            server.start()
        jobs = []
        for i, s in enumerate(servers):
            own = dict(outputs, clips=work / "clips") if outputs else None
            jobs.append((project.root, s.url, f"cam{i}", own))
        with multiprocessing.get_context("spawn").Pool(n) as pool:
            return pool.starmap(watch_one, jobs)
    finally:
        for server in servers:
            server.kill()


def summarise(name: str, rows: list[list[dict]], receipts: Receipts | None, pre: float, post: float) -> None:
    lat = np.array([x for runs in rows for r in runs for x in r["latency"]]) * 1000
    frames = sum(r["frames"] for runs in rows for r in runs)
    dropped = sum(r["dropped"] for runs in rows for r in runs)
    events = [(r, e) for runs in rows for r in runs for e in r["events"]]
    line = (
        f"{name}: {frames} frames, {dropped} dropped, {len(events)} events; arrival → score median "
        f"{np.median(lat):.1f} ms, 99th percentile {np.percentile(lat, 99):.1f} ms"
    )
    print(line, flush=True)
    if receipts is None or not events:
        return
    extra = [e["clip_end_time"] - e["clip_start_time"] - (e["duration"] + pre + post) for _, e in events if e["clip"]]
    print(
        f"    clips {len(extra)} of {len(events)}: length minus (event + pre + post) median "
        f"{statistics.median(extra):.2f} s, min {min(extra):.2f}, max {max(extra):.2f}",
        flush=True,
    )
    receipts.collect()
    for kind, got in (("webhook", receipts.webhook), ("mqtt", receipts.mqtt)):
        delays = [got[key(e)] - wall(e["end"]) for _, e in events if key(e) in got]
        if delays:
            print(
                f"    {kind}: {len(delays)} of {len(events)} delivered; event end → received median "
                f"{statistics.median(delays):.2f} s, 99th percentile {np.percentile(delays, 99):.2f} s",
                flush=True,
            )
        else:
            print(f"    {kind}: none delivered", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of off and on")
    ap.add_argument("--faults", action="store_true", help="also run the hanging webhook and killed broker")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vidanom-event-outputs-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "clip_30s.mp4"
    if not base.exists():
        make_clip(base, 30.0)
    project = train(work, base, 10.0, args.steps)
    served = work / "served.mp4"
    if not served.exists():
        copy_packets(make_clip(work / "ten.mp4", 10.0, gop=25), served, repeats=3)
    broker_dir = work / "mosquitto"
    shutil.rmtree(broker_dir, ignore_errors=True)
    broker_dir.mkdir()
    broker = Broker(broker_dir)
    broker.start()
    receipts = Receipts(broker)
    pre, post = 3.0, 1.0
    outputs = {"pre": pre, "post": post, "webhook": receipts.hook.url, "mqtt": broker.url}
    print(f"work folder {work}; load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    try:
        for n in args.cameras:
            rows: dict[str, list] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for name in ("off", "on"):
                    rows[name].append(run_round(project, served, n, outputs if name == "on" else None, work))
            for name in ("off", "on"):
                summarise(f"{n} camera(s), outputs {name}", rows[name], receipts if name == "on" else None, pre, post)
            on = np.array([x for runs in rows["on"] for r in runs for x in r["latency"]])
            off = np.array([x for runs in rows["off"] for r in runs for x in r["latency"]])
            print(
                f"    ratio on/off: median {np.median(on) / np.median(off):.2f}, "
                f"99th percentile {np.percentile(on, 99) / np.percentile(off, 99):.2f}",
                flush=True,
            )
        if args.faults:
            faults(project, served, work, receipts, broker, outputs)
        print(f"load after {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        receipts.sub.close()
        receipts.hook.close()
        broker.stop()


def faults(project: Project, clip: Path, work: Path, receipts: Receipts, broker: Broker, outputs: dict) -> None:
    """One camera; the webhook hangs for 15 s, the broker is killed at 5 s and back at 15 s."""
    receipts.hang_until = time.monotonic() + 15.0
    killer = threading.Timer(5.0, lambda: broker.stop(signal.SIGKILL))
    back = threading.Timer(15.0, broker.start)
    killer.start()
    back.start()
    rows = run_round(project, clip, 1, dict(outputs, drain=20.0), work)
    back.join()
    time.sleep(3.0)
    summarise("faults (webhook hangs 0-15 s, broker down 5-15 s)", [rows], receipts, outputs["pre"], outputs["post"])
    print(f"    outputs: {json.dumps(rows[0]['outputs'].get('webhook'))} {json.dumps(rows[0]['outputs'].get('mqtt'))}")


if __name__ == "__main__":
    main()
