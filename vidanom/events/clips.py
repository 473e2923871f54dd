"""Event clips: the camera's own video from a keyframe before an event to some seconds after it, cut
from the packet ring (ring.py), and a JPEG of the peak frame with its heatmap.

A Recording starts when an event is confirmed (its score has stayed above the threshold for
score.min_segment frames) and runs in a thread of its own, writing packets as they arrive, so memory
holds only the ring whatever the event's length. The packets are remuxed into MP4 as they are (same
codec, same bytes, timestamps rebased to start at zero) when MP4 can hold the codec (H.264, H.265,
MPEG-4, AV1, VP9, MJPEG...); otherwise (raw video from a camera, say) they are decoded and encoded
again with H.264. The clip ends at the first packet past the event's end plus `post`, when the
stream ends, or at `max_clip` seconds, and is renamed into place only when complete.

The snapshot is decoded from the finished clip (a seek to the keyframe before the peak), so it is
the camera's own picture; the error map comes from the model's small frames at the peak (see
outputs.py) and is blended in as `vidanom annotate` draws it.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from .. import fsutil
from .ring import PacketRing, Segment, Stored

POLL = 0.1  # seconds a recorder waits for the next packet before it looks at its state again
SNAPSHOT_QUALITY = 85  # JPEG
NAME = re.compile(r"^(?P<stem>.+-\d{8}-\d{6}-e\d+(?:-\d+)?)\.(?:mp4|jpg)$")  # the files recordings write
log = logging.getLogger("vidanom")


class ClipAbandoned(Exception):
    """The event was not reported after all (shorter than score.min_segment)."""


@dataclass
class ClipResult:
    """What a recording wrote."""

    clip: Path | None = None
    snapshot: Path | None = None
    start: float | None = None  # the clip's first frame in the watch's timeline, seconds
    end: float | None = None  # the end of its last frame
    mode: str = ""  # "remux" (the camera's packets as they were) or "transcode"
    capped: bool = False  # it reached max_clip before the event's end plus post
    lost: int = 0  # packets the ring dropped before they were written (a clip with a hole)
    error: str | None = None


@dataclass
class Snapshot:
    """What the peak's picture needs from the scoring side."""

    time: float  # the peak frame's time in the watch's timeline
    level: torch.Tensor  # (h, w) heatmap level in [0, 1] at the model's size (heatmap.ErrorScale.levels)
    lut: torch.Tensor  # (256, 3) the colormap


class Recording:
    """One event's clip, written by its own thread (see the module docstring).

    at: the event's start (watch timeline); finish(end, snapshot) once the event has ended;
    abandon() if it is never reported. done(recording) is called, in the recorder's thread, when
    the clip (and snapshot) are written or have failed; the outcome is in .result.
    """

    def __init__(
        self,
        ring: PacketRing,
        at: float,
        path: Path,
        *,
        pre: float,
        post: float,
        max_clip: float,
        done: Callable[[Recording], None],
    ) -> None:
        self.ring, self.at, self.path, self.pre, self.post, self.max_clip = ring, at, path, pre, post, max_clip
        self.done, self.result = done, ClipResult()
        self.end: float | None = None
        self.snapshot: Snapshot | None = None
        self.abandoned = threading.Event()
        self._claim = threading.Lock()  # the outcome is handed on once: by the thread, or by whoever gives up on it
        self.payload: dict[str, Any] | None = None  # the event, for whoever delivers it once the clip is done
        self.complete = False  # written (or failed), set by whoever delivers it
        self.thread = threading.Thread(target=self._run, name=f"vidanom-clip {path.name}", daemon=True)
        self.thread.start()

    def finish(self, end: float, snapshot: Snapshot | None) -> None:
        self.snapshot, self.end = snapshot, end
        self.ring.wake()

    def abandon(self) -> None:
        self.abandoned.set()
        self.ring.wake()

    def claim(self) -> bool:
        """True the first time only: whoever gets it hands the outcome on."""
        return self._claim.acquire(blocking=False)

    def _run(self) -> None:
        try:
            self._write(*self._start())
            self.snap(self.snapshot)
        except ClipAbandoned:
            return
        except Exception as exc:  # noqa: BLE001 - a failed clip (disk full...) must not end the watch
            self.result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else _oserror(exc)
            log.warning("event clip %s: %s", self.path.name, self.result.error)
        if not self.abandoned.is_set() and self.claim():
            self.done(self)

    def _start(self) -> tuple[Segment, Stored]:
        """Where the clip starts; right after a connection opens, wait for its first usable keyframe
        (over RTSP the first comes without timestamps)."""
        while not self.abandoned.is_set():
            found = self.ring.start(self.at - self.pre)
            if found is not None:
                return found
            with self.ring.cond:
                if self.ring.segments and self.ring.segments[-1].closed:
                    break
                self.ring.cond.wait(POLL)
        if self.abandoned.is_set():
            raise ClipAbandoned
        raise RuntimeError("no video was buffered for it")

    def _write(self, seg: Segment, key: Stored) -> None:
        """Remux, or where MP4 refuses the codec, transcode; into the temporary file, then rename."""
        try:
            with _remuxer(self.path, seg, key) as write:
                self.result.mode = "remux"
                self._copy(seg, key, write)
        except _Unsupported:
            with _transcoder(self.path, seg) as write:
                self.result.mode = "transcode"
                self._copy(seg, key, write)
        self.result.clip = self.path

    def _copy(self, seg: Segment, key: Stored, write: Callable[[Stored], None]) -> None:
        first, last, written = key, key, 0
        for pkt in self._packets(seg, key):
            write(pkt)
            last, written = (pkt if pkt.t >= last.t else last), written + 1
        if self.abandoned.is_set():
            raise ClipAbandoned
        if not written:
            raise RuntimeError("no video came for it")
        self.result.start = seg.watch_time(first.t)
        end = seg.watch_time(last.t + last.duration * float(seg.time_base))
        self.result.end = round(end, 3) if end is not None else None
        self.result.start = round(self.result.start, 3) if self.result.start is not None else None

    def _packets(self, seg: Segment, key: Stored) -> Iterator[Stored]:
        """The packets from key on, as they arrive, until the clip is complete (see the module docstring)."""
        seq, resync = key.seq, False
        while not self.abandoned.is_set():
            packets, closed = self.ring.read(seg, seq, POLL)
            for pkt in packets:
                if self._ahead(seg, pkt):
                    break  # wait for the scorer: the event may end before it
                if pkt.seq != seq:  # the ring dropped some before they were written: go on at a keyframe
                    self.result.lost += pkt.seq - seq
                    resync = True
                seq = pkt.seq + 1
                if resync and not pkt.startable:
                    continue
                resync = False
                if self._past_end(seg, key, pkt):
                    return
                yield pkt
            else:
                if closed and not seg.after(seq):
                    return
                continue
            with self.ring.cond:
                self.ring.cond.wait(POLL)

    def _ahead(self, seg: Segment, pkt: Stored) -> bool:
        """Whether a packet lies past what could still belong to the clip if the event ended at the
        last scored frame (a file is decoded ahead of the scoring)."""
        when, scored = seg.watch_time(pkt.t), self.ring.scored
        return self.end is None and when is not None and scored is not None and when > scored + self.post

    def _past_end(self, seg: Segment, key: Stored, pkt: Stored) -> bool:
        when = float(pkt.dts * seg.time_base) if pkt.dts is not None else pkt.t  # decoding order: all before it
        if when - key.t > self.max_clip:
            self.result.capped = True
            return True
        end = seg.stream_time(self.end) if self.end is not None else None
        return end is not None and when > end + self.post

    def snap(self, snap: Snapshot | None) -> None:
        """The clip's frame nearest the peak, with the heatmap, as a JPEG beside the clip (if the clip
        was written and holds the peak)."""
        from PIL import Image

        from ..heatmap import overlay

        r = self.result
        if snap is None or r.clip is None or r.start is None or r.end is None or not r.start <= snap.time < r.end:
            return
        frame = nearest_frame(r.clip, snap.time - r.start)
        if frame is None:
            return
        picture = overlay(torch.from_numpy(frame), snap.level, snap.lut).numpy()
        out = r.clip.with_suffix(".jpg")
        with fsutil.atomic_path(out) as tmp:
            Image.fromarray(picture).save(tmp, format="JPEG", quality=SNAPSHOT_QUALITY)
        r.snapshot = out


class _Unsupported(Exception):
    """MP4 cannot hold this codec as it is."""


@contextmanager
def _remuxer(path: Path, seg: Segment, key: Stored) -> Iterator[Callable[[Stored], None]]:
    """A function that writes a packet into a new MP4 at path, as it is; timestamps from key's PTS."""
    if seg.template is None:
        raise _Unsupported
    assert key.pts is not None
    origin, last = key.pts, list[int | None]([None])
    with fsutil.atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        try:
            stream = out.add_stream_from_template(seg.template, opaque=True)
        except ValueError as exc:  # this format does not support that codec
            raise _Unsupported from exc

        def write(pkt: Stored) -> None:
            if pkt.pts is None or pkt.dts is None or (last[0] is not None and pkt.dts <= last[0]):
                return  # MP4 needs both timestamps, decoding times strictly increasing
            packet = av.Packet(pkt.data)
            packet.pts, packet.dts, packet.duration = pkt.pts - origin, pkt.dts - origin, pkt.duration
            packet.time_base, packet.is_keyframe, packet.stream = seg.time_base, pkt.key, stream
            out.mux(packet)
            last[0] = pkt.dts

        yield write


@contextmanager
def _transcoder(path: Path, seg: Segment) -> Iterator[Callable[[Stored], None]]:
    """A function that decodes a packet and encodes its frames into a new H.264 MP4 at path."""
    from ..annotate import open_encoder

    if seg.template is None:
        raise RuntimeError(f"the codec {seg.codec} cannot be decoded again")
    holder = av.open(io.BytesIO(), "w", format="nut")
    decoder = holder.add_stream_from_template(seg.template, opaque=True).codec_context
    with ExitStack() as stack:
        encode: list[Callable[[np.ndarray], None]] = []

        def frames(packet: av.Packet | None) -> None:
            for frame in decoder.decode(packet):
                if not encode:
                    encode.append(stack.enter_context(open_encoder(path, frame.width, frame.height, seg.fps)))
                encode[0](frame.to_ndarray(format="rgb24"))

        def write(pkt: Stored) -> None:
            packet = av.Packet(pkt.data)
            packet.pts, packet.dts, packet.time_base = pkt.pts, pkt.dts, seg.time_base
            frames(packet)

        yield write
        frames(None)  # the decoder's delayed frames
        if not encode:
            raise RuntimeError("no frame could be decoded for it")
    holder.close()


def nearest_frame(path: Path, at: float) -> np.ndarray | None:
    """The frame of a video nearest `at` seconds from its first frame, RGB (H, W, 3) uint8."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 1 / 90000
        zero = (stream.start_time or 0) * tb
        container.seek(int((zero + max(at, 0.0)) / tb), stream=stream, backward=True)
        best: tuple[float, Any] | None = None
        for frame in container.decode(stream):
            t = (frame.pts * tb if frame.pts is not None else zero) - zero
            if best is None or abs(t - at) < best[0]:
                best = (abs(t - at), frame)
            if t > at:
                break
    return best[1].to_ndarray(format="rgb24") if best is not None else None


def clip_path(folder: Path, camera: str, wall: float, event: int) -> Path:
    """A new clip's path: FOLDER/CAMERA-YYYYMMDD-HHMMSS-eN.mp4 (-2, -3... if taken)."""
    stem = f"{camera}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(wall))}-e{event}"
    path, n = folder / f"{stem}.mp4", 1
    while path.exists() or path.with_suffix(".jpg").exists():
        n += 1
        path = folder / f"{stem}-{n}.mp4"
    return path


def prune(folder: Path, keep_days: float | None, keep_bytes: int | None, now: float | None = None) -> int:
    """Delete the oldest clips (with their snapshots) older than keep_days, then while all of them take
    more than keep_bytes; and temporary files their writers left when killed → files deleted. Only
    files named as recordings name them are touched."""
    now = time.time() if now is None else now
    groups: dict[str, list[tuple[Path, float, int]]] = {}
    deleted = 0
    for path in folder.iterdir():
        if path.name.endswith(".tmp") and fsutil.leftover(path):
            deleted += _unlink(path)
            continue
        match = NAME.match(path.name)
        if match and path.is_file():
            st = path.stat()
            groups.setdefault(match["stem"], []).append((path, st.st_mtime, st.st_size))
    ordered = sorted(groups.values(), key=lambda files: max(f[1] for f in files))  # oldest first
    total = sum(f[2] for files in ordered for f in files)
    for files in ordered:
        old = keep_days is not None and now - max(f[1] for f in files) > keep_days * 86400
        if not old and (keep_bytes is None or total <= keep_bytes):
            break
        for path, _, size in files:
            deleted += _unlink(path)
            total -= size
    return deleted


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except OSError:
        return 0


def _oserror(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
