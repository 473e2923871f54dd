"""Reading video with PyAV: files of any container/codec FFmpeg reads, and folders of image frames.

Frames are streamed, resized and converted by FFmpeg's scaler (`reformat`), and handed out in
small chunks, so memory does not depend on the video's length.

Every frame has a time, in seconds from the clip's first frame: its presentation timestamp (PTS),
so a variable-frame-rate file (an AVI whose camera dropped most frame slots, a phone's MP4) keeps
its true times; a frame of a folder is its position / DEFAULT_FPS. See _Clock.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .config import FrameConfig
from .errors import VideoError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {
    ".mp4",
    ".avi",
    ".mkv",
    ".mov",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".ts",
    ".mts",
    ".3gp",
    ".ogv",
    ".gif",
    ".y4m",
}
DEFAULT_FPS = 25.0  # for frame folders and streams that do not say


@dataclass(frozen=True)
class Source:
    """One clip: a video file, or a folder of image frames read in name order."""

    path: Path
    frames_dir: bool = False

    @property
    def name(self) -> str:
        return self.path.name


class PacketSink(Protocol):
    """Sees a live source's encoded packets as they are read, beside the decoding (events.ring keeps
    the last seconds of them to cut event clips from, without encoding again)."""

    def opened(self, stream: Any) -> None:
        """A connection's video stream (av.VideoStream), before its first packet."""

    def packet(self, packet: av.Packet) -> None:
        """A packet of that stream, in the order read (decoding order)."""

    def frame(self, pts_time: float | None, t: float) -> None:
        """A decoded frame: its PTS in seconds as the container gives it, and its time (see _Clock)."""

    def closed(self) -> None:
        """The connection ended: no more packets will come from it."""


@dataclass
class DecodeReport:
    """Filled in while a clip is decoded: what a caller may want to tell the user afterwards."""

    fps: float = DEFAULT_FPS  # the nominal rate the container states (not that of the times)
    frames: int = 0  # frames handed out (after the stride)
    duration: float = 0.0  # seconds: the end of the last decoded frame (its time plus its own length)
    error: str | None = None  # why decoding stopped early, if it did
    skipped: list[str] = field(default_factory=list)  # unreadable images in a frame folder


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_sources(paths: list[Path]) -> list[Source]:
    """Expand the user's paths: a video file, a folder of images (one clip), or a folder of videos."""
    out: list[Source] = []
    for path in paths:
        if not path.exists():
            raise VideoError(f"no such file or folder: {path}")
        if path.is_file():
            out.append(Source(path))
        elif not path.is_dir():  # a FIFO or a device: opening it could block forever
            raise VideoError(f"not a regular file or folder: {path}; pass a video file or a folder")
        elif _images(path):
            out.append(Source(path, frames_dir=True))
        else:
            videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not videos:
                raise VideoError(
                    f"no videos or image frames in folder: {path}; "
                    "pass video files (.mp4, .avi, .mkv, .mov...) or a folder of them or of images"
                )
            out.extend(Source(p) for p in videos)
    return out


class _Scaler:
    """Decoded frame → (H, W, C) uint8 at the project's size and channel count, by FFmpeg's scaler.

    One scaler context serves a whole clip: `VideoFrame.reformat` would set up a new one (and, by
    default, a pool of slicing threads) for every frame, which costs more than the scaling itself.
    The scaling runs without the GIL, single-threaded: frame-threaded decoding already keeps the
    cores busy.
    """

    def __init__(self, fc: FrameConfig) -> None:
        self.width, self.height, self.channels = fc.width, fc.height, fc.channels
        self.format = "gray" if fc.channels == 1 else "rgb24"
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        out = self._reformatter.reformat(frame, self.width, self.height, self.format, threads=1)
        return out.to_ndarray().reshape(self.height, self.width, self.channels)


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


RESET = 1.0  # seconds: a timestamp this far back is a new timeline (a stream restarted), not jitter


class _Clock:
    """Each decoded frame's time in seconds from the clip's first frame, from its PTS.

    A frame without a PTS is placed one nominal period per decoded frame after the one before (so
    a clip without any PTS gets index / fps), or on a live source by its arrival time. Times never
    go backwards: a timestamp a little behind the previous one (jitter) repeats the previous time;
    one more than RESET seconds behind (a stream that restarted its clock), or on a live source any
    step back, starts a new timeline from the estimate (the nominal period, or the arrival time).
    """

    def __init__(self, fps: float, live: bool = False) -> None:
        self.period, self.live = 1.0 / fps, live
        self.offset: float | None = None  # added to a frame's PTS time
        self.last: float | None = None  # the previous frame's time...
        self.last_index, self.last_wall = 0, 0.0  # ...its decoding index and arrival (monotonic)
        self.last_pts: float | None = None  # the latest PTS time seen, as the container gives it

    def __call__(self, pts_time: float | None, index: int) -> float:
        now = time.monotonic() if self.live else 0.0
        if self.last is None:
            guess = 0.0
        elif self.live:
            guess = self.last + (now - self.last_wall)
        else:
            guess = self.last + (index - self.last_index) * self.period
        if pts_time is None:
            t = guess
        else:
            self.last_pts = pts_time
            if self.offset is None:
                self.offset = guess - pts_time
            t = pts_time + self.offset
            if self.last is not None and t < self.last:
                if self.live or t < self.last - RESET:
                    self.offset += guess - t  # a new timeline, continued from the estimate
                    t = guess
                else:
                    t = self.last
        self.last, self.last_index, self.last_wall = t, index, now
        return t


def _decode_file(
    src: Source,
    fc: FrameConfig,
    report: DecodeReport,
    threads: int = 0,
    convert: Callable[[av.VideoFrame], Any] | None = None,
) -> Iterator[tuple[Any, float]]:
    limit = fc.decode_timeout
    try:
        # FFmpeg gives up on an open or a read that blocks longer than the limit (a stalled network mount)
        container = av.open(str(src.path), timeout=limit)
    except Exception as exc:  # whatever opening an untrusted file raises, it means the same
        raise VideoError(f"cannot read {src.path} as a video ({_why(exc)}); pass a complete video file") from exc
    yield from _decode_container(container, str(src.path), fc, report, threads, convert)


def _decode_container(
    container: Any,
    name: str,
    fc: FrameConfig,
    report: DecodeReport,
    threads: int = 0,
    convert: Callable[[av.VideoFrame], Any] | None = None,
    follow: bool = False,
    live: bool = False,
    sink: PacketSink | None = None,
) -> Iterator[tuple[Any, float]]:
    """Decode the first video stream of an open container: every stride-th frame, through `convert`
    (default: to the project's frame size), with its time (see _Clock). follow: a read error is the
    end of a followed file (FFmpeg's file protocol gives up after its rw_timeout without new data),
    not damage. live: a frame without a usable PTS is timed by its arrival. sink: sees every packet
    and every decoded frame's PTS and time."""
    limit = fc.decode_timeout
    with container:
        if not container.streams.video:
            what = (
                "only audio"
                if container.streams.audio
                else "no streams at all, so no frames"
                if not container.streams
                else "no video stream"
            )
            raise VideoError(f"{name} holds {what}; pass a video file with at least one frame")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding, without the GIL...
        if stream.codec_context is not None:  # (None for a codec FFmpeg does not know)
            stream.codec_context.thread_count = max(0, threads)  # ...in this many threads (0: FFmpeg's choice)
        rate = stream.average_rate or stream.guessed_rate
        report.fps = float(rate) if rate else DEFAULT_FPS
        scale = convert or _Scaler(fc)
        clock = _Clock(report.fps, live)
        if sink is not None:
            sink.opened(stream)
        index = 0
        packets = _until_idle(container.demux(stream)) if follow else container.demux(stream)
        started = time.monotonic()  # decoding time since the last frame was handed out
        while True:
            try:
                packet = next(packets, _END)
                if packet is _END:
                    break
                if sink is not None and isinstance(packet, av.Packet) and packet.size:
                    sink.packet(packet)
                decoded = stream.decode(packet)  # (packet None: flush the decoder)
            except Exception as exc:  # noqa: BLE001 - PyAV's demuxer and decoder alone: on damaged data they
                report.error = _why(exc)  # raise FFmpegError, but also IndexError, ValueError...: keep what decoded
                break
            frames = []
            for frame in decoded:
                t = clock(frame.time, index)
                if sink is not None:
                    sink.frame(frame.time, t)
                report.duration = t + (_length(frame) or clock.period)
                if index % fc.stride == 0:
                    frames.append((scale(frame), t))
                index += 1
            if time.monotonic() - started > limit:
                report.error = f"no frame decoded in {limit:g} s (frames.decode_timeout)"
                return
            for pair in frames:
                yield pair
                started = time.monotonic()  # the consumer's time does not count
        expected = stream.frames  # from the container's index, where it has one (0 if not)
        if expected and index < expected - max(2, expected // 100) and not _reached_end(stream, clock):
            # a single-threaded decoder meets the damage as an error, a frame-threaded one as an early end
            short = f"{index} of the {expected} frames it lists could be decoded"
            report.error = f"{report.error} ({short})" if report.error else f"the file ends early: {short}"


def _length(frame: av.VideoFrame) -> float | None:
    """How long the frame is shown, in seconds, as the container says (None where it does not)."""
    length, base = getattr(frame, "duration", None), frame.time_base  # (AVFrame.duration: PyAV 14 on)
    return float(length * base) if length and length > 0 and base else None


def _reached_end(stream: Any, clock: _Clock) -> bool:
    """Whether the last frame's timestamp lies at the stream's stated end: then fewer frames than
    the index lists means empty slots (an AVI whose camera dropped frames), not an early end."""
    if clock.last_pts is None or not stream.duration or stream.time_base is None:
        return False
    end = float((stream.duration + (stream.start_time or 0)) * stream.time_base)
    span = float(stream.duration * stream.time_base)
    return clock.last_pts >= end - max(2 * clock.period, 0.01 * span)


_END = object()


def _until_idle(packets: Iterator[av.Packet]) -> Iterator[av.Packet | None]:
    """The packets of a followed file, then None (flush the decoder) once reading fails: FFmpeg's
    file protocol, following, fails a read only when rw_timeout passed without new data."""
    try:
        yield from packets
    except av.FFmpegError:
        pass
    yield None


def _decode_folder(
    src: Source, fc: FrameConfig, report: DecodeReport, convert: Callable[[av.VideoFrame], Any] | None = None
) -> Iterator[tuple[Any, float]]:
    """Every stride-th image, at its position in the folder / fps (an unreadable image keeps its slot)."""
    scale = convert or _Scaler(fc)
    images = _images(src.path)
    report.duration = len(images) / report.fps
    for i, path in enumerate(images[:: fc.stride]):
        try:
            with av.open(str(path), timeout=fc.decode_timeout) as container:
                image = scale(next(container.decode(video=0)))
        except Exception as exc:  # noqa: BLE001 - an unreadable image, whatever PyAV raises for it
            report.skipped.append(f"{path.name}: {_why(exc) if not isinstance(exc, StopIteration) else 'no image'}")
            continue
        yield image, i * fc.stride / report.fps


def _frames(
    src: Source,
    fc: FrameConfig,
    report: DecodeReport,
    threads: int,
    convert: Callable[[av.VideoFrame], Any] | None = None,
) -> Iterator[tuple[Any, float]]:
    if src.frames_dir:
        return _decode_folder(src, fc, report, convert)
    return _decode_file(src, fc, report, threads, convert)


def _finish(name: object, report: DecodeReport) -> None:
    """After the last frame: no frame at all is an error, one that broke off midway a warning."""
    if report.frames == 0:
        why = f": {report.error}" if report.error else ""
        raise VideoError(
            f"no frames could be decoded from {name}{why}; pass a video (or images) with at least one readable frame"
        )
    if report.error:
        logging.getLogger("vidanom").warning(
            "%s: decoding stopped after %d frames (%s)", name, report.frames, report.error
        )


def first_frame_size(src: Source, fc: FrameConfig) -> tuple[int, int]:
    """(width, height) of the clip's first frame, as decoded."""
    report = DecodeReport()
    for size, _ in _frames(src, fc, report, 1, lambda frame: (frame.width, frame.height)):
        return size
    why = f": {report.error}" if report.error else ""
    raise VideoError(
        f"no frames could be decoded from {src.path}{why}; pass a video (or images) with at least one readable frame"
    )


def iter_timed_chunks(
    src: Source, fc: FrameConfig, size: int, report: DecodeReport | None = None, threads: int = 0
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """Decode src into chunks of at most `size` frames with their times: ((n, H, W, C) uint8,
    (n,) float64 seconds from the first frame, non-decreasing; see _Clock).

    threads: FFmpeg's decoding threads for a video file. 0 lets FFmpeg choose (one per core and
    one more), the fastest even beside inference in another thread (see
    inference.DECODING_THREADS); 1 decodes in the calling thread alone, at the least CPU per frame.

    Raises VideoError when the clip cannot be opened or yields no frame at all; a clip that breaks
    off midway ends early with `report.error` set.
    """
    if size < 1:
        raise ValueError(f"chunk size must be positive, not {size}")
    report = report if report is not None else DecodeReport()
    shape = (fc.height, fc.width, fc.channels)
    buf, times, n = np.empty((size, *shape), np.uint8), np.empty(size), 0
    for frame, t in _frames(src, fc, report, threads):
        buf[n], times[n] = frame, t  # one copy, straight into the chunk (no list of frames, no np.stack)
        n += 1
        report.frames += 1
        if n == size:
            yield buf, times
            # fresh ones: the consumer may keep the last
            buf, times, n = np.empty((size, *shape), np.uint8), np.empty(size), 0
    if n:
        yield buf[:n], times[:n]
    _finish(src.path, report)


def iter_chunks(
    src: Source, fc: FrameConfig, size: int, report: DecodeReport | None = None, threads: int = 0
) -> Generator[np.ndarray, None, None]:
    """iter_timed_chunks without the times: chunks of at most `size` frames, (n, H, W, C) uint8."""
    chunks = iter_timed_chunks(src, fc, size, report, threads)
    try:
        for frames, _ in chunks:
            yield frames
    finally:
        chunks.close()  # closed with this one: the decoder stops and the file closes now


class _WithFullSize:
    """Decoded frame → (the frame at the project's size (h, w, C), the same frame in RGB at the
    source's own size (H, W, 3)), both uint8.

    The full-size frames keep the size of the clip's first frame (a stream that changes size
    midway, or a folder of images of mixed sizes, is scaled to it), so that they stack and encode.
    """

    def __init__(self, fc: FrameConfig) -> None:
        self.scale = _Scaler(fc)
        self._reformatter = VideoReformatter()
        self.size: tuple[int, int] | None = None

    def __call__(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray]:
        if self.size is None:
            self.size = (frame.width, frame.height)
        width, height = self.size
        full = self._reformatter.reformat(frame, width, height, "rgb24", threads=1).to_ndarray()
        return self.scale(frame), full


def iter_full_chunks(
    src: Source, fc: FrameConfig, size: int, report: DecodeReport | None = None, threads: int = 0
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """Like iter_chunks, with every frame also in RGB at the source's own size: chunks of
    (small (n, h, w, C), full (n, H, W, 3)), both uint8, for drawing on what a person watches.

    The small frames are those iter_chunks gives (the same decoder and scaler), so a model sees
    the same input as when the clip was scored. Keep `size` small: a 1080p frame is 6 MB.
    """
    if size < 1:
        raise ValueError(f"chunk size must be positive, not {size}")
    report = report if report is not None else DecodeReport()
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    for pair, _ in _frames(src, fc, report, threads, _WithFullSize(fc)):
        batch.append(pair)
        report.frames += 1
        if len(batch) == size:
            yield np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
            batch = []
    if batch:
        yield np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
    _finish(src.path, report)


# FFmpeg's answers when an RTSP server will not send RTP over TCP: 461 Unsupported Transport (as
# EPROTONOSUPPORT), 400 Bad Request, or another 4xx
_NO_TCP = (av.error.HTTPBadRequestError, av.error.HTTPOtherClientError)


def _refuses_tcp(exc: BaseException) -> bool:
    """Whether opening an RTSP URL with RTP over TCP failed because the server does not offer it."""
    return isinstance(exc, _NO_TCP) or getattr(exc, "errno", None) == errno.EPROTONOSUPPORT


def _open_rtsp(target: str, opts: dict[str, str], timeout: tuple[float, float]) -> Any:
    """Open an RTSP URL: the user's rtsp_transport if given, else TCP first (UDP loses packets, so
    smears frames, on a busy network), then UDP when the server refuses TCP."""
    if "rtsp_transport" in opts:
        return av.open(target, options=opts, timeout=timeout)
    try:
        return av.open(target, options={**opts, "rtsp_transport": "tcp"}, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - only a refusal of TCP is worth a second try
        if not _refuses_tcp(exc):
            raise
    return av.open(target, options={**opts, "rtsp_transport": "udp"}, timeout=timeout)


def _open_live(location: str, fc: FrameConfig, options: dict[str, str], follow: float) -> Any:
    """Open a URL, a V4L2 device or a file as FFmpeg input (see iter_live).

    FFmpeg gives up on the open, or on a read, that blocks longer than frames.decode_timeout (a
    stalled stream); following a file, a read may block until it has not grown for `follow` s.
    """
    limit, opts, fmt, target = fc.decode_timeout, dict(options), None, location
    timeout = (limit, max(limit, follow + 5) if follow else limit)
    if location.startswith("/dev/video"):
        fmt = "v4l2"
    elif "://" not in location:
        path = Path(location)
        if not path.exists():
            raise VideoError(
                f"no such file: {location}; pass a video file, a URL (rtsp://, http://...) "
                "or a camera device (/dev/video0)"
            )
        if path.is_dir():
            raise VideoError(f"{location} is a folder; watch reads one video file, URL or camera")
        target = f"file:{path}"  # a path with a colon in its name is still a file
        if follow:
            # retry at the end of the file until it has not grown for `follow` seconds; do not read to
            # the end first to estimate the duration (that would wait for the writer to finish)
            opts.update(follow="1", rw_timeout=str(int(follow * 1e6)), skip_estimate_duration_from_pts="1")
    try:
        if location.startswith("rtsp://"):
            return _open_rtsp(target, opts, timeout)
        return av.open(target, format=fmt, options=opts, timeout=timeout)
    except Exception as exc:  # whatever opening a network stream or an untrusted file raises
        raise VideoError(
            f"cannot open {location} as a video ({_why(exc)}); check the address, the device or the file"
        ) from exc


def iter_live(
    location: str,
    fc: FrameConfig,
    report: DecodeReport | None = None,
    options: dict[str, str] | None = None,
    follow: float = 0.0,
    warn: bool = True,
    sink: PacketSink | None = None,
) -> Generator[tuple[np.ndarray, float], None, None]:
    """Frames (h, w, C) uint8 at the project's size with their times (seconds from the first frame),
    one at a time as they arrive, of a live source: a URL FFmpeg reads (rtsp://, http://, udp://...),
    a V4L2 camera (/dev/video0), or a file.

    Times come from the PTS; on a URL or a camera, a frame without one (or whose PTS steps back) is
    timed by its arrival instead (see _Clock).

    options: FFmpeg options for the input (e.g. rtsp_transport, video_size). An rtsp:// URL without
    rtsp_transport is tried over TCP, then over UDP if the server refuses TCP. follow > 0: a file
    still being written is read as it grows, and ends once it has not grown for `follow` seconds
    (a container that can be read while written: MPEG-TS, Matroska, raw H.264; not MP4).

    sink: sees the encoded packets as they are read (see PacketSink).

    Raises VideoError when the source cannot be opened or yields no frame. A stream that breaks off
    (an error, or no frame for frames.decode_timeout seconds) ends with `report.error` set, and a
    logged warning unless warn is False (for a caller that reports it itself, e.g. to reconnect).
    """
    report = report if report is not None else DecodeReport()
    container = _open_live(location, fc, options or {}, follow)
    live = "://" in location or location.startswith("/dev/")
    frames = _decode_container(container, location, fc, report, follow=follow > 0, live=live, sink=sink)
    try:
        for frame, t in frames:
            report.frames += 1
            yield frame, t
    finally:
        if sink is not None:
            sink.closed()
    if warn or report.frames == 0:
        _finish(location, report)
