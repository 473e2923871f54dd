"""From cached frames to model inputs: training and scoring must see the same inputs; splits and windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidanom.data import (
    SPEED_FLOOR,
    MotionPlane,
    box_mean,
    Split,
    Timing,
    gather,
    motion_scale,
    premade,
    sample_batch,
    spread,
    to_input,
    window_starts,
)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, 4, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_to_input_against_a_direct_computation(frames, lag):
    x = to_input(torch.from_numpy(frames), lag)
    f = frames.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    assert x.shape == (12, 3 * (2 if lag else 1), 4, 5)
    np.testing.assert_allclose(x[:, :3].numpy(), f, rtol=1e-6)
    if lag:  # the first `lag` frames have no past: the first frame stands in for it
        prev = f[np.maximum(np.arange(12) - lag, 0)]
        np.testing.assert_allclose(x[:, 3:].numpy(), f - prev, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lag", [0, 2])
def test_to_input_with_context_continues_a_clip(frames, lag):
    whole = to_input(torch.from_numpy(frames), lag)
    ctx = torch.from_numpy(frames[5 - lag : 5]) if lag else None
    torch.testing.assert_close(to_input(torch.from_numpy(frames[5:]), lag, ctx), whole[5:])


# -- motion scaled by the time a difference spans ----------------------------------------------------


def test_motion_scale_by_hand():
    # ref 0.04 s: the usual gap → 1; 2.5× longer → 0.4; 25× longer → at most 8-fold down; shorter or zero → 1
    got = motion_scale(np.array([0.04, 0.1, 1.0, 0.02, 0.0, 0.32]), 0.04)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), [1.0, 0.4, 0.125, 1.0, 1.0, 0.125], rtol=1e-6)


def test_to_input_scales_each_difference_by_its_gap(frames):
    gaps = np.array([0.0, 0.04, 0.08, 0.2, 0.04, 0.5, 0.01, 0.04, 0.04, 0.12, 0.04, 0.04])
    plain = to_input(torch.from_numpy(frames), 1)
    scaled = to_input(torch.from_numpy(frames), 1, gaps=gaps, ref_dt=0.04)
    by_hand = np.minimum(1.0, np.maximum(1 / 8, 0.04 / np.maximum(gaps, 1e-12)))  # (1, 1, .5, .2, 1, .125...)
    torch.testing.assert_close(scaled[:, :3], plain[:, :3])  # the frame itself is untouched
    np.testing.assert_allclose(
        scaled[:, 3:].numpy(), plain[:, 3:].numpy() * by_hand[:, None, None, None], rtol=1e-6, atol=1e-7
    )
    assert not np.allclose(scaled[3, 3:].numpy(), plain[3, 3:].numpy())
    # without a reference interval (or without gaps) nothing changes
    torch.testing.assert_close(to_input(torch.from_numpy(frames), 1, gaps=gaps), plain)
    torch.testing.assert_close(to_input(torch.from_numpy(frames), 1, ref_dt=0.04), plain)
    # gather scales the same frames the same way
    idx = np.array([1, 3, 5, 9])
    torch.testing.assert_close(gather(frames, idx, 1, gaps[idx], 0.04), scaled[idx])


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_training_batches_see_the_same_inputs_as_scoring(frames, lag):
    idx = np.array([0, 2, 3, 7, 11])
    torch.testing.assert_close(gather(frames, idx, lag), to_input(torch.from_numpy(frames), lag)[idx])


def test_a_sampled_batch_holds_the_inputs_of_the_drawn_rows(frames):
    clips = [frames, frames[::-1].copy()]
    index = np.array([[c, t] for c in range(2) for t in range(10)])
    got = sample_batch(clips, index, 6, 1, np.random.default_rng(7))
    rows = index[np.random.default_rng(7).integers(len(index), size=6)]
    expected = torch.cat([to_input(torch.from_numpy(clips[c]), 1)[[t]] for c, t in rows])
    key = lambda t: sorted(map(tuple, t.flatten(1).numpy().round(6).tolist()))  # noqa: E731
    assert got.shape == (6, 6, 4, 5) and key(got) == key(expected)
    # the same generator state draws the same batch: a resumed run sees the batches it would have
    torch.testing.assert_close(sample_batch(clips, index, 6, 1, np.random.default_rng(7)), got)


def test_premade_inputs_give_the_batches_made_from_the_frames(frames):
    clips = [frames, frames[::-1][:7].copy()]
    index = np.array([[c, t] for c in range(2) for t in range(len(clips[c]))])
    times = [np.cumsum(np.random.default_rng(c).uniform(0.02, 0.3, len(clip))) for c, clip in enumerate(clips)]
    plane, timing = MotionPlane(lag=2, kind="magnitude", gain=8.0, blur=3), Timing(times, 0.04)
    made = premade(clips, plane, timing, most_bytes=10**6)
    assert made is not None and [m.shape for m in made] == [(12, 6, 4, 5), (7, 6, 4, 5)]
    for seed in range(3):  # bit for bit: a model trains alike either way
        got = sample_batch(clips, index, 16, plane, np.random.default_rng(seed), timing, made=made)
        assert torch.equal(got, sample_batch(clips, index, 16, plane, np.random.default_rng(seed), timing))
    # inputs that would not fit are made from the frames at every step, as before
    assert premade(clips, plane, timing, most_bytes=19 * 6 * 4 * 5 * 4 - 1) is None
    assert premade(clips, plane, timing, most_bytes=19 * 6 * 4 * 5 * 4) is not None


def test_split_holds_out_whole_clips_when_there_are_enough():
    split = Split.blocks([100] * 10, [25.0] * 10, holdout=0.2, block_seconds=5.0)
    assert [i for i, h in enumerate(split.held) if h] == [2, 7]  # evenly spread, not the last ones
    assert split.held[2] == [(0, 100)] and split.runs(held=True) == [(2, 0, 100), (7, 0, 100)]
    assert len(split.train_index()) == 800 and len(split.index(held=True)) == 200


def test_split_holds_out_time_blocks_of_few_clips():
    # one 40 s clip at 25 fps: blocks of 5 s (125 frames), every fifth-ish one held out
    split = Split.blocks([1000], [25.0], holdout=0.2, block_seconds=5.0)
    assert split.held == [[(250, 375), (750, 875)]]
    mask = split.mask(0)
    assert mask.sum() == 250 and not mask[:250].any() and mask[250:375].all()
    assert split.runs() == [(0, 0, 250), (0, 375, 750), (0, 875, 1000)]
    # short footage: shorter blocks, so that there are enough of them (2 s: 0.4 s blocks of 10 frames)
    short = Split.blocks([50], [25.0], holdout=0.2, block_seconds=5.0)
    assert short.held == [[(20, 30)]]
    assert Split.blocks([1], [25.0], 0.2, 5.0).held == [[]]  # one frame: nothing to hold out
    np.testing.assert_array_equal(Split.none([3, 2]).train_index(), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]])


def test_spread_keeps_evenly_spaced_rows():
    index = np.arange(20).reshape(10, 2)
    np.testing.assert_array_equal(spread(index, 4), index[[0, 3, 6, 9]])
    assert spread(index, 50) is index


def test_window_starts_fit_inside_each_clip():
    starts = window_starts([10, 5, 12], 8)
    assert starts.tolist() == [[0, 0], [0, 1], [2, 0], [2, 1], [2, 2], [2, 3]]  # start + 8 < length
    # when no clip holds a whole window, every clip longer than one frame is used once
    assert window_starts([4, 1, 6], 8).tolist() == [[0, 0], [2, 0]]


def test_the_magnitude_plane_is_the_local_mean_absolute_difference_times_the_gain(frames):
    plane = MotionPlane(lag=1, kind="magnitude", gain=8.0, blur=3)
    x = to_input(torch.from_numpy(frames), plane)
    f = frames.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    diff = np.abs(f - f[np.maximum(np.arange(12) - 1, 0)])
    h, w = diff.shape[2:]
    ref = np.zeros_like(diff)
    for r in range(h):  # the mean over the 3x3 pixels around each that lie inside the frame
        for c in range(w):
            ref[:, :, r, c] = diff[:, :, max(0, r - 1) : r + 2, max(0, c - 1) : c + 2].mean((2, 3))
    np.testing.assert_allclose(x[:, 3:].numpy(), 8.0 * ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, :3].numpy(), f, rtol=1e-6)
    assert plane.range == (0.0, 8.0) and MotionPlane(gain=2.0).range == (-2.0, 2.0)
    # training draws the same planes as scoring computes
    torch.testing.assert_close(gather(frames, np.array([0, 5, 11]), plane), x[[0, 5, 11]])


@pytest.mark.parametrize("step", [2, 8])
def test_the_speed_plane_is_the_shift_in_pixels_whatever_the_contrast(step):
    # a horizontal ramp of `step` grey levels a column, shifted one column a frame: its difference and its
    # gradient are both the slope, so away from the border the speed is gain / (1 + floor / slope), where the
    # magnitude is gain · slope: four times the contrast, four times the magnitude, nearly the same speed
    ramp = 40 + step * np.arange(20)
    clip = np.stack([np.tile(ramp - step * t, (12, 1)) for t in range(3)])[..., None].astype(np.uint8)
    frames, slope = torch.from_numpy(clip), step / 255
    speed = to_input(frames, MotionPlane(lag=1, kind="speed", gain=2.0, blur=3))[1:, 1, 2:-2, 2:-3]
    magnitude = to_input(frames, MotionPlane(lag=1, kind="magnitude", gain=2.0, blur=3))[1:, 1, 2:-2, 2:-3]
    np.testing.assert_allclose(speed.numpy(), 2.0 / (1 + SPEED_FLOOR / slope), rtol=1e-5)
    np.testing.assert_allclose(magnitude.numpy(), 2.0 * slope, rtol=1e-5)
    # a frozen frame has no speed; speed is capped at the gain (the plane's range), as a sharp jump over flat ground
    assert to_input(frames[[0, 0]], MotionPlane(lag=1, kind="speed", gain=2.0, blur=3))[:, 1].abs().max() == 0
    jump = torch.zeros(2, 8, 8, 1, dtype=torch.uint8)
    jump[1, 2:6, 2:6] = 255
    plane = MotionPlane(lag=1, kind="speed", gain=2.0, blur=1)
    assert to_input(jump, plane)[1, 1].max() == plane.range[1] == 2.0


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_box_mean_is_the_window_mean_without_the_padding(k):
    x = torch.rand(2, 3, 20, 33, generator=torch.Generator().manual_seed(k))
    ref = torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)
    torch.testing.assert_close(box_mean(x, k), ref)
