"""The frame cache: each extracted clip is a raw uint8 file (frames, H, W, C) read memory-mapped,
a raw float64 file (.t) of every frame's time in seconds (from its timestamp, see video), plus a
JSON file that describes it. The JSON is written last, so its presence means complete. A clip
cached before times were kept has no .t file: its times are index · stride / fps."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import fsutil
from .config import FrameConfig
from .errors import VidanomError
from .video import DecodeReport, Source, iter_timed_chunks

CHUNK = 256  # frames decoded and written at a time


@dataclass(frozen=True)
class ClipMeta:
    key: str  # file stem in the cache
    name: str  # the clip's file or folder name
    source: str  # absolute path it was read from
    scene: str  # the normal scene it belongs to (train/update)
    frames: int
    fps: float
    height: int
    width: int
    channels: int
    stride: int
    truncated: bool = False  # decoding broke off before the end of the file
    duration: float | None = None  # seconds (None in a cache written before times were kept)
    # a stretch a person accepted as normal (vidanom accept): where its first frame lies in its source,
    # in seconds, and where it came from (clip, times, event); None for a whole clip
    offset: float = 0.0
    accepted: dict[str, Any] | None = None


def cache_key(src: Source, fc: FrameConfig) -> str:
    """Same file (path, size, mtime) and same frame settings → same key, so re-extracting is free."""
    st = src.path.stat()
    ident = f"{src.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{fc.width}x{fc.height}x{fc.channels}/{fc.stride}"
    if src.frames_dir:
        ident += "|" + ",".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(src.path.iterdir()))
    return f"{src.path.stem[:40]}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def find(cache_dir: Path, key: str) -> ClipMeta | None:
    path = cache_dir / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return ClipMeta(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None  # damaged: extract again


def check_scene(cache_dir: Path, src: Source, fc: FrameConfig, scene: str) -> ClipMeta | None:
    """The cached clip of src (None if it is not cached yet); VidanomError if it is cached as another
    scene: a clip belongs to one scene, and quietly moving it would take it out of the footage its
    first scene was trained and is recalibrated on."""
    key = cache_key(src, fc)
    meta = find(cache_dir, key)
    if meta is not None and meta.scene != scene:
        raise VidanomError(
            f"{src.name} is already cached as scene '{meta.scene}' ({cache_dir / key}.*); a clip belongs to one "
            f"scene: name '{meta.scene}', or delete its cache files to extract it as '{scene}'"
        )
    return meta


def extract(
    cache_dir: Path, src: Source, fc: FrameConfig, scene: str, on_frames: Callable[[int], None] | None = None
) -> tuple[ClipMeta, bool]:
    """Decode src into the cache unless it is there already. Returns (meta, newly_extracted).
    Raises VidanomError if it is cached as another scene (see check_scene)."""
    meta = check_scene(cache_dir, src, fc, scene)
    if meta is not None:
        return meta, False
    key = cache_key(src, fc)
    report = DecodeReport()
    with (
        fsutil.atomic_path(cache_dir / f"{key}.u8") as tmp,
        open(tmp, "wb") as out,
        fsutil.atomic_path(cache_dir / f"{key}.t") as ttmp,
        open(ttmp, "wb") as tout,
    ):
        for chunk, times in iter_timed_chunks(src, fc, CHUNK, report):
            out.write(np.ascontiguousarray(chunk).tobytes())
            tout.write(np.ascontiguousarray(times, "<f8").tobytes())
            if on_frames:
                on_frames(len(chunk))
        out.flush()
        tout.flush()
    meta = ClipMeta(
        key,
        src.name,
        str(src.path.resolve()),
        scene,
        report.frames,
        report.fps,
        fc.height,
        fc.width,
        fc.channels,
        fc.stride,
        truncated=report.error is not None,
        duration=report.duration,
    )
    fsutil.write_json(cache_dir / f"{key}.json", asdict(meta))
    return meta, True


def extract_span(
    cache_dir: Path, src: Source, fc: FrameConfig, scene: str, span: tuple[float, float], accepted: dict[str, Any]
) -> tuple[ClipMeta, bool]:
    """Cache the frames of src whose times lie in span = [start, end) seconds as a clip of its own
    (a stretch accepted as normal, with its provenance `accepted`), unless it is cached already.
    Decodes src up to the span's end only. Returns (meta, newly_extracted); VidanomError when no
    frame lies in the span."""
    start, end = span
    key = f"{cache_key(src, fc)}-{hashlib.sha1(f'{start:.3f}-{end:.3f}'.encode()).hexdigest()[:8]}"
    meta = find(cache_dir, key)
    if meta is not None:
        return meta, False
    report, first, count, last = DecodeReport(), None, 0, start
    with fsutil.atomic_path(cache_dir / f"{key}.u8") as tmp, open(tmp, "wb") as out:
        with fsutil.atomic_path(cache_dir / f"{key}.t") as ttmp, open(ttmp, "wb") as tout:
            chunks = iter_timed_chunks(src, fc, CHUNK, report)
            for chunk, times in chunks:
                inside = (times >= start) & (times < end)
                if inside.any():
                    first = float(times[inside][0]) if first is None else first
                    out.write(np.ascontiguousarray(chunk[inside]).tobytes())
                    tout.write(np.ascontiguousarray(times[inside] - first, "<f8").tobytes())
                    count, last = count + int(inside.sum()), float(times[inside][-1])
                if times[-1] >= end:
                    chunks.close()  # the rest of the clip is not needed
                    break
            if first is None:
                raise VidanomError(f"no frame of {src.name} lies between {start:.2f} s and {end:.2f} s")
    step = (last - first) / (count - 1) if count > 1 else fc.stride / report.fps
    meta = ClipMeta(
        key,
        f"{src.name}@{first:.1f}-{last + step:.1f}s",
        str(src.path.resolve()),
        scene,
        count,
        report.fps,
        fc.height,
        fc.width,
        fc.channels,
        fc.stride,
        duration=last - first + step,
        offset=first,
        accepted=accepted,
    )
    fsutil.write_json(cache_dir / f"{key}.json", asdict(meta))
    return meta, True


def load(cache_dir: Path, meta: ClipMeta) -> np.ndarray:
    """The clip's frames, memory-mapped: (frames, H, W, C) uint8."""
    shape = (meta.frames, meta.height, meta.width, meta.channels)
    return np.memmap(cache_dir / f"{meta.key}.u8", dtype=np.uint8, mode="r", shape=shape)


def load_times(cache_dir: Path, meta: ClipMeta) -> np.ndarray:
    """The clip's frame times, seconds from its first frame: (frames,) float64, non-decreasing.

    A clip cached before times were kept (no .t file, or one of the wrong size) gets
    index · stride / fps, the times it was then given.
    """
    path = cache_dir / f"{meta.key}.t"
    if path.is_file() and path.stat().st_size == 8 * meta.frames:
        return np.fromfile(path, dtype="<f8")
    return np.arange(meta.frames) * (meta.stride / meta.fps)


def clips(
    cache_dir: Path, fc: FrameConfig, scene: str | None = None, accepted: set[str] | None = None
) -> list[ClipMeta]:
    """Cached clips that match the frame settings, optionally of one scene, in name order; with
    `accepted`, the accepted stretches among them only if their keys are in it (those a model
    version accepted: see Project.accepted_keys)."""
    out = []
    for path in sorted(cache_dir.glob("*.json")):
        meta = find(cache_dir, path.stem)
        if meta is None or (meta.height, meta.width, meta.channels, meta.stride) != (
            fc.height,
            fc.width,
            fc.channels,
            fc.stride,
        ):
            continue
        if meta.accepted is not None and accepted is not None and meta.key not in accepted:
            continue
        if scene is None or meta.scene == scene:
            out.append(meta)
    return sorted(out, key=lambda m: (m.name, m.key))


def size_bytes(cache_dir: Path) -> int:
    return sum(os.path.getsize(p) for pattern in ("*.u8", "*.t") for p in cache_dir.glob(pattern))
