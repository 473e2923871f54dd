"""The last seconds of a live source's encoded video, kept to cut event clips from (see clips.py).

The decoding thread hands every packet it reads to a PacketRing (a video.PacketSink) before
decoding it: the packet's bytes and timestamps are copied into a ring that holds, per connection
(a Segment), at least `keep` seconds back from the newest packet, starting at a keyframe, and never
more than `max_bytes` in all (the older packets go first; past the cap a clip's pre-roll is shorter).
Memory therefore stays bounded whatever the stream or the events do.

Times. A packet's time is its PTS in seconds (the stream's own clock). Events are in the watch's
timeline (seconds since watching started, see watch.py); each decoded frame tells the ring how
the two relate (its PTS and its time), and the watch tells it where each connection starts in
its timeline (origin). A clip is cut in the stream's clock, so a remuxed clip keeps its original
timestamps, rebased to start at zero.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

RESET = 1.0  # seconds: a frame whose PTS-to-time offset moved this much starts a new timeline
SEGMENTS = 2  # connections kept: the current one, and the one before (a clip may still be cut from it)


@dataclass(frozen=True)
class Stored:
    """One encoded packet, copied out of FFmpeg."""

    seq: int  # its number in the ring, consecutive across segments
    data: bytes
    pts: int | None  # in the segment's time base
    dts: int | None
    duration: int
    key: bool
    t: float  # seconds on the stream's clock: the PTS, else the previous packet's

    @property
    def startable(self) -> bool:
        """Whether a clip can start here: a keyframe with both timestamps."""
        return self.key and self.pts is not None and self.dts is not None


class Segment:
    """The packets of one connection, and what it takes to write them into a new file."""

    def __init__(self, stream: Any, first_seq: int) -> None:
        self.time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.codec = stream.codec_context.name if stream.codec_context is not None else "?"
        self.packets: deque[Stored] = deque()
        self.keys: deque[Stored] = deque()  # its startable keyframes, oldest first
        self.bytes, self.next_seq = 0, first_seq
        self.offset: float | None = None  # a frame's time minus its PTS time
        self.origin: float | None = None  # where the connection's time 0 lies in the watch's timeline
        self.closed = False
        # the codec's parameters outlive the input: a stream of an unwritten in-memory container
        self._holder = av.open(io.BytesIO(), "w", format="nut")
        try:
            self.template: Any = self._holder.add_stream_from_template(stream, opaque=True)
        except Exception:  # noqa: BLE001 - a codec that cannot even be described: no clips from it
            self.template = None

    def watch_time(self, t: float) -> float | None:
        """A time on the stream's clock → the watch's timeline (None until a frame has said)."""
        if self.offset is None or self.origin is None:
            return None
        return t + self.offset + self.origin

    def stream_time(self, watch: float) -> float | None:
        """The inverse of watch_time."""
        if self.offset is None or self.origin is None:
            return None
        return watch - self.offset - self.origin

    def drop_head(self) -> None:
        head = self.packets.popleft()
        self.bytes -= len(head.data)
        if self.keys and self.keys[0].seq == head.seq:
            self.keys.popleft()

    def after(self, seq: int) -> list[Stored]:
        """The packets numbered seq and later."""
        if not self.packets:
            return []
        start = max(0, seq - self.packets[0].seq)
        return list(self.packets)[start:] if start < len(self.packets) else []


class PacketRing:
    """A bounded ring of a live source's packets (see the module docstring); thread-safe."""

    def __init__(self, keep: float, max_bytes: int) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        self.segments: deque[Segment] = deque()
        self.cond = threading.Condition()
        self._seq = 0
        self.peak_bytes = 0  # the most it held
        # the latest scored frame's time (watch timeline; None: not told): a clip's end is not known past
        # it, and what the scorer has not reached yet is kept (a file is decoded ahead of the scoring)
        self.scored: float | None = None

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    # -- the decoding thread (video.PacketSink) --------------------------------------------------

    def opened(self, stream: Any) -> None:
        segment = Segment(stream, self._seq)
        with self.cond:
            if self.segments:
                self.segments[-1].closed = True
            self.segments.append(segment)
            while len(self.segments) > SEGMENTS:
                self.segments.popleft()
            self.cond.notify_all()

    def packet(self, packet: av.Packet) -> None:
        with self.cond:
            if not self.segments:
                return
            seg = self.segments[-1]
            last = seg.packets[-1].t if seg.packets else 0.0
            pts = packet.pts
            t = float(pts * seg.time_base) if pts is not None else last
            stored = Stored(self._seq, bytes(packet), pts, packet.dts, packet.duration or 0, packet.is_keyframe, t)
            self._seq += 1
            seg.packets.append(stored)
            seg.bytes += len(stored.data)
            seg.next_seq = self._seq
            if stored.startable:
                seg.keys.append(stored)
            self._evict(seg, t)
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self.cond.notify_all()

    def _evict(self, seg: Segment, newest: float) -> None:
        """Drop whole groups of pictures while the next keyframe is still `keep` s older than the newest
        packet and the scored frames; then, over the byte cap, the older segment and the oldest
        packets, whatever they are."""
        scored = seg.stream_time(self.scored) if self.scored is not None else None
        horizon = min(newest, scored if scored is not None else newest) - self.keep
        while len(seg.keys) >= 2 and seg.keys[1].t <= horizon:
            second = seg.keys[1].seq
            while seg.packets[0].seq < second:
                seg.drop_head()
        while self.bytes > self.max_bytes and len(self.segments) > 1:
            self.segments.popleft()
        while seg.bytes > self.max_bytes and len(seg.packets) > 1:
            seg.drop_head()
        while seg.packets and not seg.packets[0].key and seg.keys:  # a clip can only start at a keyframe
            seg.drop_head()

    def frame(self, pts_time: float | None, t: float) -> None:
        if pts_time is None:
            return
        with self.cond:
            if not self.segments:
                return
            seg = self.segments[-1]
            offset = t - pts_time
            if seg.offset is None or abs(offset - seg.offset) > RESET:
                if seg.offset is not None:  # the stream's clock jumped: what came before no longer places
                    while seg.packets:
                        seg.drop_head()
                seg.offset = offset

    def closed(self) -> None:
        with self.cond:
            if self.segments:
                self.segments[-1].closed = True
            self.cond.notify_all()

    # -- the watch ------------------------------------------------------------------------------

    def scored_until(self, t: float) -> None:
        """Frames up to t (the watch's timeline) have been scored."""
        with self.cond:
            self.scored = t
            self.cond.notify_all()

    def wake(self) -> None:
        """Something a reader waits for other than a packet has changed (an event's end is known)."""
        with self.cond:
            self.cond.notify_all()

    def origin(self, t: float) -> None:
        """The current connection's first frame is at t in the watch's timeline (and at 0 on its own)."""
        with self.cond:
            if self.segments:
                self.segments[-1].origin = t

    # -- a clip's recorder ------------------------------------------------------------------------

    def start(self, at: float) -> tuple[Segment, Stored] | None:
        """Where a clip from `at` (the watch's timeline) starts: the segment that holds that time and
        its last keyframe at or before it (or its first, when the ring no longer goes back so far)."""
        with self.cond:
            usable = [s for s in self.segments if s.keys and s.stream_time(at) is not None]
            for seg in reversed(usable):
                start = seg.stream_time(at)
                assert start is not None
                newest = seg is self.segments[-1]
                if seg.keys[0].t <= start and (newest or start <= seg.packets[-1].t):
                    return seg, [k for k in seg.keys if k.t <= start][-1]
            return (usable[-1], usable[-1].keys[0]) if usable else None

    def read(self, seg: Segment, seq: int, wait: float) -> tuple[list[Stored], bool]:
        """The segment's packets from number seq on, waiting up to `wait` s for one; and whether the
        segment has ended (no more will come)."""
        with self.cond:
            packets = seg.after(seq)
            if not packets and not seg.closed:
                self.cond.wait(wait)
                packets = seg.after(seq)
            return packets, seg.closed
