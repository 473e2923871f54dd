"""Made anomalies: what each kind changes, where, and for which frames; sizes and speeds from the footage."""

from __future__ import annotations

import numpy as np
import pytest

from vidanom import made

H, W, N = 60, 90, 40


def walkers(n: int = N, height: int = 12, width: int = 6, speed: int = 2, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a textured background with two upright bright rectangles walking right."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 90, size=(H, W, 1)).repeat(3, -1).astype(np.uint8)
    frames = np.repeat(bg[None], n, 0)
    for i in range(n):
        for row, x0 in ((10, 2), (40, 20)):
            x = (x0 + speed * i) % (W - width)
            frames[i, row : row + height, x : x + width] = 230
    return frames


def test_scene_scale_measures_the_moving_objects_and_walking_pace() -> None:
    scale = made.scene_scale(walkers(height=14), fps=10.0)
    assert scale.object_height == pytest.approx(14, abs=1)
    assert scale.walking_speed == pytest.approx(made.WALK_HEIGHTS_PER_SECOND * scale.object_height / 10.0)
    assert made.scene_scale(walkers(height=8), fps=10.0).object_height == pytest.approx(8, abs=1)


def test_fast_region_plays_its_box_faster_and_leaves_the_rest() -> None:
    frames = walkers()
    box = (5, 10, 30, 40)
    clip = made.fast_region(frames, 5, 8, box, speed=3)
    t, left, b, r = box
    for k in range(8):
        assert np.array_equal(clip.frames[5 + k, t:b, left:r], frames[5 + 3 * k, t:b, left:r])
    outside = np.ones((H, W), bool)
    outside[t:b, left:r] = False
    assert np.array_equal(clip.frames[:, outside], frames[:, outside])
    assert np.flatnonzero(clip.labels).tolist() == list(range(5, 14))  # and the frame where it jumps back
    assert clip.mask(6)[t:b, left:r].all() and clip.mask(6).sum() == (b - t) * (r - left)
    assert not clip.mask(20).any()
    with pytest.raises(ValueError, match="needs more"):
        made.fast_region(frames, 20, 8, box, speed=3)


def test_stopped_region_holds_its_box_still() -> None:
    frames = walkers()
    box = (35, 15, 55, 45)
    clip = made.stopped_region(frames, 10, 6, box)
    t, left, b, r = box
    assert all(np.array_equal(clip.frames[10 + k, t:b, left:r], frames[10, t:b, left:r]) for k in range(6))
    assert not np.array_equal(frames[12, t:b, left:r], frames[10, t:b, left:r])  # it moved in the original
    assert np.array_equal(clip.frames[16:], frames[16:])
    assert clip.labels.sum() == 7


def test_busiest_box_covers_the_motion() -> None:
    frames = walkers()
    frames[:, 10:22] = frames[0, 10:22]  # only the lower walker moves now
    top, left, bottom, right = made.busiest_box(frames, 0, 10, (16, 16))
    assert top <= 40 and bottom >= 52  # the walker's rows (40-52)
    assert bottom - top == 16 and right - left == 16


def test_usual_motion_finds_the_direction_of_walking() -> None:
    (row, col), (dy, dx) = made.usual_motion(walkers())
    assert abs(dx) > 0.9 and abs(dy) < 0.3
    assert 0 <= row < H and 0 <= col < W


def test_foreign_object_moves_at_walking_pace_where_it_says() -> None:
    frames = walkers()
    donor = walkers(height=20, width=8, seed=3)
    pixels, alpha = made.cut_object(donor)
    assert pixels.shape[0] == pytest.approx(20, abs=2) and pixels.shape[0] >= 1.2 * pixels.shape[1]
    assert alpha.shape == pixels.shape[:2] and 0 <= alpha.min() and alpha.max() <= 1 and alpha.mean() > 0.8
    scale = made.SceneScale(object_height=10.0, fps=10.0)
    clip = made.foreign_object(frames, (pixels, alpha), 4, 20, scale, ((30.0, 45.0), (0.0, 1.0)))
    rows = np.flatnonzero(clip.labels)
    assert rows[0] == 4 and rows[-1] == 23
    lefts = clip.boxes[rows, 1].astype(float)
    assert np.diff(lefts).mean() == pytest.approx(scale.walking_speed, abs=0.1)
    heights = clip.boxes[rows, 2] - clip.boxes[rows, 0]
    assert (heights == 10).all()
    changed = np.any(clip.frames != frames, axis=-1)  # (n, H, W)
    assert not changed[~clip.labels].any()
    inside = np.stack([clip.mask(i) for i in range(N)])
    assert not (changed & ~inside).any()
    assert changed[rows].any(axis=(1, 2)).all()


def test_whole_frame_fast_and_freeze() -> None:
    frames = walkers()
    fast = made.fast(frames, 4, 6, speed=4)
    assert len(fast.frames) == N - 6 * 3
    assert all(np.array_equal(fast.frames[4 + k], frames[4 + 4 * k]) for k in range(6))
    assert np.array_equal(fast.frames[10], frames[28])
    assert np.flatnonzero(fast.labels).tolist() == list(range(4, 10))
    frozen = made.freeze(frames, 5, 10)
    assert all(np.array_equal(f, frames[5]) for f in frozen.frames[5:15])
    assert np.array_equal(frozen.frames[15:], frames[15:]) and frozen.labels.sum() == 10
