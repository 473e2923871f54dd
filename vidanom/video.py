"""Reading video with PyAV: files of any container/codec FFmpeg reads, and folders of image frames.

Frames are streamed, resized and converted by FFmpeg's scaler (`reformat`), and handed out in
small chunks, so memory does not depend on the video's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .config import FrameConfig
from .errors import VideoError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                  ".ts", ".mts", ".3gp", ".ogv", ".gif", ".y4m"}
DEFAULT_FPS = 25.0  # for frame folders and streams that do not say


@dataclass(frozen=True)
class Source:
    """One clip: a video file, or a folder of image frames read in name order."""

    path: Path
    frames_dir: bool = False

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class DecodeReport:
    """Filled in while a clip is decoded: what a caller may want to tell the user afterwards."""

    fps: float = DEFAULT_FPS
    frames: int = 0  # frames handed out (after the stride)
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
                raise VideoError(f"no videos or image frames in folder: {path}; "
                                 "pass video files (.mp4, .avi, .mkv, .mov...) or a folder of them or of images")
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


def _decode_file(src: Source, fc: FrameConfig, report: DecodeReport, threads: int = 0,
                 convert: Callable[[av.VideoFrame], Any] | None = None) -> Iterator[Any]:
    limit = fc.decode_timeout
    try:
        # FFmpeg gives up on an open or a read that blocks longer than the limit (a stalled network mount)
        container = av.open(str(src.path), timeout=limit)
    except Exception as exc:  # whatever opening an untrusted file raises, it means the same
        raise VideoError(f"cannot read {src.path} as a video ({_why(exc)}); "
                         "pass a complete video file") from exc
    yield from _decode_container(container, str(src.path), fc, report, threads, convert)


def _decode_container(container: Any, name: str, fc: FrameConfig, report: DecodeReport, threads: int = 0,
                      convert: Callable[[av.VideoFrame], Any] | None = None,
                      follow: bool = False) -> Iterator[Any]:
    """Decode the first video stream of an open container: every stride-th frame, through `convert`
    (default: to the project's frame size). follow: a read error is the end of a followed file
    (FFmpeg's file protocol gives up after its rw_timeout without new data), not damage."""
    limit = fc.decode_timeout
    with container:
        if not container.streams.video:
            what = ("only audio" if container.streams.audio else "no streams at all, so no frames"
                    if not container.streams else "no video stream")
            raise VideoError(f"{name} holds {what}; pass a video file with at least one frame")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding, without the GIL...
        if stream.codec_context is not None:  # (None for a codec FFmpeg does not know)
            stream.codec_context.thread_count = max(0, threads)  # ...in this many threads (0: FFmpeg's choice)
        rate = stream.average_rate or stream.guessed_rate
        report.fps = float(rate) if rate else DEFAULT_FPS
        scale = convert or _Scaler(fc)
        index = 0
        packets = _until_idle(container.demux(stream)) if follow else container.demux(stream)
        started = time.monotonic()  # decoding time since the last frame was handed out
        while True:
            try:
                packet = next(packets, _END)
                if packet is _END:
                    break
                frames = []
                for frame in stream.decode(packet):  # (packet None: flush the decoder)
                    if index % fc.stride == 0:
                        frames.append(scale(frame))
                    index += 1
            except Exception as exc:  # FFmpegError mostly, but PyAV raises others on damaged data too
                report.error = _why(exc)  # a damaged or truncated file: keep what decoded
                break
            if time.monotonic() - started > limit:
                report.error = f"no frame decoded in {limit:g} s (frames.decode_timeout)"
                return
            for frame in frames:
                yield frame
                started = time.monotonic()  # the consumer's time does not count
        expected = stream.frames  # from the container's index, where it has one (0 if not)
        if expected and index < expected - max(2, expected // 100):
            # a single-threaded decoder meets the damage as an error, a frame-threaded one as an early end
            short = f"{index} of the {expected} frames it lists could be decoded"
            report.error = f"{report.error} ({short})" if report.error else f"the file ends early: {short}"


_END = object()


def _until_idle(packets: Iterator[av.Packet]) -> Iterator[av.Packet | None]:
    """The packets of a followed file, then None (flush the decoder) once reading fails: FFmpeg's
    file protocol, following, fails a read only when rw_timeout passed without new data."""
    try:
        yield from packets
    except av.FFmpegError:
        pass
    yield None


def _decode_folder(src: Source, fc: FrameConfig, report: DecodeReport,
                   convert: Callable[[av.VideoFrame], Any] | None = None) -> Iterator[Any]:
    scale = convert or _Scaler(fc)
    for path in _images(src.path)[::fc.stride]:
        try:
            with av.open(str(path), timeout=fc.decode_timeout) as container:
                image = scale(next(container.decode(video=0)))
        except Exception as exc:  # noqa: BLE001 - an unreadable image, whatever PyAV raises for it
            report.skipped.append(f"{path.name}: {_why(exc) if not isinstance(exc, StopIteration) else 'no image'}")
            continue
        yield image


def _frames(src: Source, fc: FrameConfig, report: DecodeReport, threads: int,
            convert: Callable[[av.VideoFrame], Any] | None = None) -> Iterator[Any]:
    if src.frames_dir:
        return _decode_folder(src, fc, report, convert)
    return _decode_file(src, fc, report, threads, convert)


def _finish(name: object, report: DecodeReport) -> None:
    """After the last frame: no frame at all is an error, one that broke off midway a warning."""
    if report.frames == 0:
        why = f": {report.error}" if report.error else ""
        raise VideoError(f"no frames could be decoded from {name}{why}; "
                         "pass a video (or images) with at least one readable frame")
    if report.error:
        logging.getLogger("vidanom").warning("%s: decoding stopped after %d frames (%s)",
                                             name, report.frames, report.error)


def first_frame_size(src: Source, fc: FrameConfig) -> tuple[int, int]:
    """(width, height) of the clip's first frame, as decoded."""
    report = DecodeReport()
    for size in _frames(src, fc, report, 1, lambda frame: (frame.width, frame.height)):
        return size
    why = f": {report.error}" if report.error else ""
    raise VideoError(f"no frames could be decoded from {src.path}{why}; "
                     "pass a video (or images) with at least one readable frame")


def iter_chunks(src: Source, fc: FrameConfig, size: int, report: DecodeReport | None = None,
                threads: int = 0) -> Iterator[np.ndarray]:
    """Decode src into chunks of at most `size` frames: (n, H, W, C) uint8.

    threads: FFmpeg's decoding threads for a video file. 0 lets FFmpeg choose (one per core and
    one more), the fastest even beside inference in another thread (see
    inference.decoding_threads); 1 decodes in the calling thread alone, at the least CPU per frame.

    Raises VideoError when the clip cannot be opened or yields no frame at all; a clip that breaks
    off midway ends early with `report.error` set.
    """
    if size < 1:
        raise ValueError(f"chunk size must be positive, not {size}")
    report = report if report is not None else DecodeReport()
    shape = (fc.height, fc.width, fc.channels)
    buf, n = np.empty((size, *shape), np.uint8), 0
    for frame in _frames(src, fc, report, threads):
        buf[n] = frame  # one copy, straight into the chunk (no list of frames, no np.stack)
        n += 1
        report.frames += 1
        if n == size:
            yield buf
            buf, n = np.empty((size, *shape), np.uint8), 0  # a fresh one: the consumer may keep the last
    if n:
        yield buf[:n]
    _finish(src.path, report)


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


def iter_full_chunks(src: Source, fc: FrameConfig, size: int, report: DecodeReport | None = None,
                     threads: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Like iter_chunks, with every frame also in RGB at the source's own size: chunks of
    (small (n, h, w, C), full (n, H, W, 3)), both uint8, for drawing on what a person watches.

    The small frames are those iter_chunks gives (the same decoder and scaler), so a model sees
    the same input as when the clip was scored. Keep `size` small: a 1080p frame is 6 MB.
    """
    if size < 1:
        raise ValueError(f"chunk size must be positive, not {size}")
    report = report if report is not None else DecodeReport()
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    for pair in _frames(src, fc, report, threads, _WithFullSize(fc)):
        batch.append(pair)
        report.frames += 1
        if len(batch) == size:
            yield np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
            batch = []
    if batch:
        yield np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
    _finish(src.path, report)


def _open_live(location: str, fc: FrameConfig, options: dict[str, str], follow: float) -> Any:
    """Open a URL, a V4L2 device or a file as FFmpeg input (see iter_live)."""
    limit, opts, fmt, target = fc.decode_timeout, dict(options), None, location
    if "://" in location:
        if location.startswith("rtsp://"):
            opts.setdefault("rtsp_transport", "tcp")  # UDP loses packets (smeared frames) on busy networks
    elif location.startswith("/dev/video"):
        fmt = "v4l2"
    else:
        path = Path(location)
        if not path.exists():
            raise VideoError(f"no such file: {location}; pass a video file, a URL (rtsp://, http://...) "
                             "or a camera device (/dev/video0)")
        if path.is_dir():
            raise VideoError(f"{location} is a folder; watch reads one video file, URL or camera")
        target = f"file:{path}"  # a path with a colon in its name is still a file
        if follow:
            # retry at the end of the file until it has not grown for `follow` seconds; do not read to
            # the end first to estimate the duration (that would wait for the writer to finish)
            opts.update(follow="1", rw_timeout=str(int(follow * 1e6)), skip_estimate_duration_from_pts="1")
    try:
        return av.open(target, format=fmt, options=opts, timeout=(limit, max(limit, follow + 5)))
    except Exception as exc:  # whatever opening a network stream or an untrusted file raises
        raise VideoError(f"cannot open {location} as a video ({_why(exc)}); check the address, the "
                         "device or the file") from exc


def iter_live(location: str, fc: FrameConfig, report: DecodeReport | None = None,
              options: dict[str, str] | None = None, follow: float = 0.0) -> Iterator[np.ndarray]:
    """Frames (h, w, C) uint8 at the project's size, one at a time as they arrive, of a live source:
    a URL FFmpeg reads (rtsp://, http://, udp://...), a V4L2 camera (/dev/video0), or a file.

    options: FFmpeg options for the input (e.g. rtsp_transport, video_size). follow > 0: a file
    still being written is read as it grows, and ends once it has not grown for `follow` seconds
    (a container that can be read while written: MPEG-TS, Matroska, raw H.264; not MP4).
    """
    report = report if report is not None else DecodeReport()
    container = _open_live(location, fc, options or {}, follow)
    for frame in _decode_container(container, location, fc, report, follow=follow > 0):
        report.frames += 1
        yield frame
    _finish(location, report)
