"""Anomalies made from normal footage: labelled stand-ins for the unusual on a camera that has no labels.

Real anomalies are local: one cyclist among walkers, one cart, one person who stops. These are made the
same way, from normal frames the model did not train on, and labelled frame by frame (and by a box per
frame, for heatmaps):
- fast_region: one moving region played `speed` times faster for a while, the rest of the frame untouched;
- stopped_region: one moving region frozen for a while, the rest going on;
- foreign_object: an object cut from another camera's footage (its own appearance), scaled to this
  camera's objects and moved across the frame at this camera's walking pace: only its look is wrong;
- fast and freeze: the whole frame played faster, or frozen mid-motion.

Sizes and speeds come from the footage itself (scene_scale: how tall moving things are, and the frame
rate), never from constants fitted to one camera. Everything works on (n, H, W, C) uint8 frames in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("fast_region", "stopped_region", "foreign_object", "fast", "freeze")
# a walker covers about 0.8 of its own height a second (1.4 m/s for 1.7 m): walking pace in pixels
WALK_HEIGHTS_PER_SECOND = 0.8
BACKGROUND_SAMPLES = 64  # frames whose median is the background


@dataclass(frozen=True)
class SceneScale:
    """How large moving things are, and how fast they walk, in one camera's pixels and frames."""

    object_height: float  # the typical height in pixels of what moves
    fps: float

    @property
    def walking_speed(self) -> float:
        """Pixels per frame."""
        return WALK_HEIGHTS_PER_SECOND * self.object_height / self.fps

    def region(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of a region around one moving object: twice its height square, inside the frame."""
        side = 2 * self.object_height
        return int(np.clip(side, 8, height / 2)), int(np.clip(side, 8, width / 3))


@dataclass(frozen=True)
class MadeClip:
    """A clip with a made anomaly."""

    kind: str
    frames: np.ndarray  # (n, H, W, C) uint8
    labels: np.ndarray  # (n,) bool: the frames that show the made anomaly
    boxes: np.ndarray  # (n, 4) int: (top, left, bottom, right) of what was changed in each frame; 0s where nothing

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool: the pixels frame i's anomaly changed (its box)."""
        out = np.zeros(self.frames.shape[1:3], bool)
        t, left, b, r = self.boxes[i]
        out[t:b, left:r] = True
        return out


def gray(frames: np.ndarray) -> np.ndarray:
    """(n, H, W, C) uint8 → (n, H, W) float32 in [0, 1]."""
    return frames.astype(np.float32).mean(-1) / 255.0


def background(frames: np.ndarray) -> np.ndarray:
    """(H, W) float32: the per-pixel median of up to BACKGROUND_SAMPLES evenly spread frames' gray."""
    idx = np.linspace(0, len(frames) - 1, min(len(frames), BACKGROUND_SAMPLES)).round().astype(int)
    return np.median(gray(frames[idx]), 0)


def foreground(frames: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(n, H, W) bool: pixels that differ from the background by more than its noise allows.

    The threshold is 4 times the pixels' median absolute deviation from the background (most pixels
    are background at any time), at least 0.04: from the footage, not a constant for one camera.
    """
    dev = np.abs(gray(frames) - bg)
    return dev > max(0.04, 4.0 * float(np.median(dev)))


def object_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The connected regions of one (H, W) foreground mask: their boxes (m, 4) (top, left, bottom,
    right) and areas (m,). The mask is cleaned of specks (opened by a 3×3 square) and its fragments
    joined (closed by a square of 1/50 of the frame's height: a person's coat and legs are one
    region); regions under 0.05% of the frame are left out."""
    import cv2

    clean = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    k = max(3, mask.shape[0] // 50)
    clean = cv2.morphologyEx(clean, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(clean, connectivity=8)
    x, y, w, h, area = (stats[1:count, j] for j in range(5))
    keep = area >= max(4, 0.0005 * mask.size)
    return np.stack([y, x, y + h, x + w], 1)[keep], area[keep]


def scene_scale(frames: np.ndarray, fps: float) -> SceneScale:
    """How tall the moving objects are in up to BACKGROUND_SAMPLES of the frames (the upper quartile)."""
    bg = background(frames)
    idx = np.linspace(0, len(frames) - 1, min(len(frames), BACKGROUND_SAMPLES)).round().astype(int)
    heights = np.concatenate([b[:, 2] - b[:, 0] for b, _ in map(object_boxes, foreground(frames[idx], bg))])
    # the upper quartile: a person is often found in fragments (coat, legs), and crowds merge into one
    # region only in the top few
    height = float(np.percentile(heights, 75)) if len(heights) else frames.shape[1] / 8
    return SceneScale(max(4.0, height), fps)


def busiest_box(frames: np.ndarray, start: int, end: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (top, left, bottom, right) box of `size` (rows, columns) where frames[start:end] move most:
    the most frames in which part of it changes, then the most change."""
    g = gray(frames[max(0, start - 1) : end])
    moving = np.abs(np.diff(g, axis=0)) > 0.04  # (m, H, W)
    rows, cols = size
    # per frame, whether each box position holds a changing pixel (box sums by integral images)
    count = _box_sums(moving.astype(np.float32), rows, cols)  # (m, H - rows + 1, W - cols + 1)
    score = (count > 0).sum(0) + count.sum(0) / max(1.0, float(count.sum()))
    top, left = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(top), int(left), int(top) + rows, int(left) + cols


def _box_sums(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(m, H, W) → (m, H − rows + 1, W − cols + 1): the sum over each rows × cols window."""
    c = np.pad(x.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    return c[:, rows:, cols:] - c[:, :-rows, cols:] - c[:, rows:, :-cols] + c[:, :-rows, :-cols]


def _made(kind: str, frames: np.ndarray, span: range, boxes: dict[int, tuple[int, int, int, int]]) -> MadeClip:
    labels = np.zeros(len(frames), bool)
    labels[span.start : span.stop] = True
    out = np.zeros((len(frames), 4), np.int64)
    for i, box in boxes.items():
        out[i] = box
    return MadeClip(kind, frames, labels, out)


def fast_region(
    frames: np.ndarray, start: int, length: int, box: tuple[int, int, int, int], speed: int = 3
) -> MadeClip:
    """The box plays `speed` times faster for `length` frames from `start` (it needs start + speed ·
    length frames); the frame after the stretch, where the box jumps back, is labelled too."""
    if start + speed * length > len(frames) or start + length >= len(frames):
        raise ValueError(f"a fast region of {length} frames at {speed}x from {start} needs more than {len(frames)}")
    out = frames.copy()
    t, left, b, r = box
    for k in range(length):
        out[start + k, t:b, left:r] = frames[start + speed * k, t:b, left:r]
    span = range(start, start + length + 1)
    return _made("fast_region", out, span, {i: box for i in span})


def stopped_region(frames: np.ndarray, start: int, length: int, box: tuple[int, int, int, int]) -> MadeClip:
    """The box stays as it was at `start` for `length` frames; the rest of the frame goes on."""
    if start + length >= len(frames):
        raise ValueError(f"a stopped region of {length} frames from {start} needs more than {len(frames)}")
    out = frames.copy()
    t, left, b, r = box
    out[start : start + length, t:b, left:r] = frames[start, t:b, left:r]
    span = range(start, start + length + 1)
    return _made("stopped_region", out, span, {i: box for i in span})


def cut_object(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One moving object of some frames (another camera's), upright and of the footage's usual
    height (a person rather than a group): its pixels (h, w, C) uint8 and its alpha (h, w) float32
    in [0, 1] (its foreground, softened at the edge)."""
    import cv2

    bg = background(frames)
    height = scene_scale(frames, 1.0).object_height
    best: tuple[float, int, np.ndarray] | None = None
    idx = np.linspace(0, len(frames) - 1, min(len(frames), BACKGROUND_SAMPLES)).round().astype(int)
    for i, mask in zip(idx, foreground(frames[idx], bg)):
        for t, left, b, r in object_boxes(mask)[0]:
            h, w = b - t, r - left
            if h < 1.2 * w or not 0.7 * height <= h <= 1.5 * height:
                continue
            filled = float(mask[t:b, left:r].mean())  # a whole person, not a fragment or an outline
            if best is None or filled > best[0]:
                best = (filled, int(i), np.array([t, left, b, r]))
    if best is None:
        raise ValueError("no moving object to cut: the footage shows no upright moving object")
    _, i, (t, left, b, r) = best
    mask = foreground(frames[i : i + 1], bg)[0, t:b, left:r].astype(np.float32)
    alpha = cv2.GaussianBlur(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)), (3, 3), 0)
    return frames[i, t:b, left:r].copy(), alpha.astype(np.float32)


def usual_motion(frames: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where and along which line things usually move: the (row, column) where the foreground is
    most often found, and the principal axis (dy, dx) of the optical flow of moving pixels (DIS, on
    up to 16 frame pairs)."""
    import cv2

    idx = np.linspace(0, len(frames) - 1, min(len(frames), BACKGROUND_SAMPLES)).round().astype(int)
    often = cv2.blur(foreground(frames[idx], background(frames)).mean(0), (frames.shape[2] // 8,) * 2)
    row, col = np.unravel_index(int(np.argmax(often)), often.shape)
    g = (gray(frames) * 255).astype(np.uint8)
    flow = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    vectors = []
    for i in np.linspace(1, len(g) - 1, min(len(g) - 1, 16)).round().astype(int):
        f = np.asarray(flow.calc(g[i - 1], g[i], np.zeros((*g.shape[1:], 2), np.float32)))
        vectors.append(f[np.hypot(f[..., 0], f[..., 1]) > 0.5][:, ::-1])  # (dy, dx) of the moving pixels
    v = np.concatenate(vectors) if vectors else np.zeros((0, 2))
    axis = np.linalg.eigh(v.T @ v)[1][:, -1] if len(v) > 1 else np.array([0.0, 1.0])
    return (float(row), float(col)), (float(axis[0]), float(axis[1]))


def foreign_object(
    frames: np.ndarray,
    obj: tuple[np.ndarray, np.ndarray],
    start: int,
    length: int,
    scale: SceneScale,
    path: tuple[tuple[float, float], tuple[float, float]],
) -> MadeClip:
    """Paste obj (pixels, alpha from cut_object), scaled to the scene's object height, for `length`
    frames from `start`, moving at the scene's walking pace along path (a point and a direction, as
    usual_motion gives: through that point halfway through the stretch).

    The object keeps its own colours unless the footage is gray, where it is made gray too."""
    import cv2

    pixels, alpha = obj
    h = max(4, round(scale.object_height))
    w = max(2, round(pixels.shape[1] * h / pixels.shape[0]))
    pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1).astype(np.float32)
    alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)[..., None]
    if _is_gray(frames):
        pixels = np.repeat(pixels.mean(-1, keepdims=True), frames.shape[-1], -1)
    out, boxes = frames.copy(), {}
    (cy, cx), (dy, dx) = path
    for k in range(min(length, len(frames) - start)):
        step = (k - length / 2) * scale.walking_speed
        top, left = int(round(cy + step * dy - h / 2)), int(round(cx + step * dx - w / 2))
        t, b = max(0, top), min(frames.shape[1], top + h)
        a, r = max(0, left), min(frames.shape[2], left + w)
        if t >= b or a >= r:
            continue
        ys, xs = slice(t - top, b - top), slice(a - left, r - left)
        region = out[start + k, t:b, a:r].astype(np.float32)
        blend = alpha[ys, xs] * pixels[ys, xs] + (1 - alpha[ys, xs]) * region
        out[start + k, t:b, a:r] = blend.round().clip(0, 255).astype(np.uint8)
        boxes[start + k] = (t, a, b, r)
    span = range(min(boxes), max(boxes) + 1) if boxes else range(start, start)
    return _made("foreign_object", out, span, boxes)


def _is_gray(frames: np.ndarray) -> bool:
    first = frames[0].astype(np.int16)
    return frames.shape[-1] == 1 or bool(np.abs(first - first[..., :1]).max() <= 2)


def fast(frames: np.ndarray, start: int, length: int, speed: int = 4) -> MadeClip:
    """The whole frame plays `speed` times faster for `length` frames from `start` (every speed-th
    frame), then on at normal speed from where the fast stretch ended."""
    if start + speed * length > len(frames):
        raise ValueError(f"a fast stretch of {length} frames at {speed}x from {start} needs more than {len(frames)}")
    out = np.concatenate(
        [frames[:start], frames[start : start + speed * length : speed], frames[start + speed * length :]]
    )
    full = (0, 0, *frames.shape[1:3])
    return _made("fast", out, range(start, start + length), {i: full for i in range(start, start + length)})


def freeze(frames: np.ndarray, start: int, length: int) -> MadeClip:
    """The whole frame stops on frame `start` for `length` frames (people stop mid-step), then goes on."""
    if start + length > len(frames):
        raise ValueError(f"a freeze of {length} frames from {start} needs more than {len(frames)}")
    out = frames.copy()
    out[start : start + length] = frames[start]
    full = (0, 0, *frames.shape[1:3])
    return _made("freeze", out, range(start, start + length), {i: full for i in range(start, start + length)})
