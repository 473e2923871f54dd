"""The direction component: Lucas-Kanade flow against a least-squares reference, direction bins, the
places' histograms, and surprise at motion the training frames never showed in a place."""

from __future__ import annotations

import math

import numpy as np
import torch

from vidanom.direction import BINS, RIDGE, WINDOW, DirectionCounts, DirectionSurprise, flow, polar

SIZE = 32


def blob(x: float, y: float, size: int = SIZE) -> torch.Tensor:
    """(1, 1, size, size) a smooth bright spot centred at (x, y), in [0, 1]."""
    at = torch.arange(size, dtype=torch.float64)
    ys, xs = torch.meshgrid(at, at, indexing="ij")
    return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0**2))[None, None].float()


def test_flow_solves_each_windows_least_squares_and_finds_a_small_shift():
    prev, cur = blob(15.0, 16.0), blob(15.4, 15.8)
    f = flow(cur, prev)[0].double().numpy()
    # the reference: the window's gradients stacked and solved by numpy's least squares (with the ridge)
    a, b = prev[0, 0].double().numpy(), cur[0, 0].double().numpy()
    mid = (a + b) / 2
    ix = np.zeros_like(mid)
    iy = np.zeros_like(mid)
    ix[:, 1:-1] = (mid[:, 2:] - mid[:, :-2]) / 2
    iy[1:-1, :] = (mid[2:, :] - mid[:-2, :]) / 2
    it = b - a
    r = WINDOW // 2
    for py, px in [(16, 15), (12, 18), (20, 10)]:
        win = (slice(py - r, py + r + 1), slice(px - r, px + r + 1))
        g = np.stack([ix[win].ravel(), iy[win].ravel()], 1) / math.sqrt(WINDOW * WINDOW)
        rhs = -it[win].ravel() / math.sqrt(WINDOW * WINDOW)
        ridge = math.sqrt(RIDGE) * np.eye(2)  # RIDGE on the diagonal of gᵀg
        want = np.linalg.lstsq(np.vstack([g, ridge]), np.concatenate([rhs, [0, 0]]), rcond=None)[0]
        np.testing.assert_allclose(f[:, py, px], want, rtol=1e-3, atol=1e-5)
    # and near the spot the motion is the shift: 0.4 right, 0.2 up
    np.testing.assert_allclose(f[:, 16, 15], [0.4, -0.2], atol=0.05)


def test_polar_bins_directions_counterclockwise_from_the_left():
    f = torch.tensor([[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).T[None, :, :, None]
    speed, bins = polar(f)
    assert speed[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    # atan2 runs from -π (pointing left) through -π/2 (up, image rows grow downwards) to π
    assert bins[0, :4, 0].tolist() == [0, BINS // 4, BINS // 2, 3 * BINS // 4]


def moving(dx: float, frames: int = 24, y: float = 8.0) -> torch.Tensor:
    """(frames, SIZE·SIZE) a spot crossing the top half of the frame dx pixels a frame."""
    start = 6.0 if dx > 0 else SIZE - 6.0
    return torch.cat([blob(start + dx * t, y).flatten(1) for t in range(frames)])


def counts_of(clip: torch.Tensor, places: int = 16) -> DirectionCounts:
    counts = DirectionCounts(places, None)
    counts.clip()
    counts.add(clip, None, (SIZE, SIZE), torch.ones(len(clip), dtype=torch.bool))
    return counts


def test_histograms_count_speed_per_direction_and_place_and_shrink_to_the_frame():
    counts = counts_of(moving(0.5))
    assert counts.counts.shape == (BINS, 16)
    busiest = counts.counts.sum(0).argmax()
    assert int(busiest) < 8  # the spot crossed the top half
    assert int(counts.counts[:, busiest].argmax()) == BINS // 2  # mostly to the right
    logp = counts.log_probabilities(1.0)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(16), rtol=1e-5, atol=1e-5)
    frame = counts.log_probabilities(0.0)  # no footage of its own: every place is the whole frame
    torch.testing.assert_close(frame, frame[:1].expand_as(frame))


def test_motion_the_wrong_way_is_surprising_and_the_usual_way_is_not():
    logp = counts_of(torch.cat([moving(0.5), moving(0.6, y=9.0)])).log_probabilities(0.9)[None]
    usual = DirectionSurprise(logp, 2, None)(moving(0.5, y=8.5), None, (SIZE, SIZE))
    wrong = DirectionSurprise(logp, 2, None)(moving(-0.5, y=8.5), None, (SIZE, SIZE))
    still = DirectionSurprise(logp, 2, None)(moving(0.0, y=8.5), None, (SIZE, SIZE))
    assert usual is not None and wrong is not None and still is not None
    assert usual.shape == (24, 1)
    assert float(still.abs().max()) < 1e-6  # nothing moves: nothing to be surprised at
    # the usual way counts nothing beyond the first frames (where the spot's start reads as a jump); the wrong way
    # counts on every frame, hundreds of times more
    assert float(usual[4:].max()) < 1e-4
    assert float(wrong[1:].min()) > 1.0


def test_without_histograms_there_is_no_direction():
    assert DirectionSurprise(None, 2, None)(moving(0.5), None, (SIZE, SIZE)) is None


def test_chunks_carry_the_frame_before_so_a_stream_scores_as_one_pass():
    logp = counts_of(moving(0.5)).log_probabilities(0.5)[None]
    clip, dt = moving(-0.4), torch.full((24,), 0.1)
    whole = DirectionSurprise(logp, 3, 0.1)(clip, dt, (SIZE, SIZE))
    stream = DirectionSurprise(logp, 3, 0.1)
    parts = [stream(clip[s : s + 5], dt[s : s + 5], (SIZE, SIZE)) for s in range(0, 24, 5)]
    torch.testing.assert_close(torch.cat(parts), whole)  # type: ignore[arg-type]
    # a frame that comes two intervals late moved twice as far: its speed counts as the usual interval's
    late = dt.clone()
    late[12] = 0.2
    scaled = DirectionSurprise(logp, 3, 0.1)(clip, late, (SIZE, SIZE))
    assert scaled is not None and whole is not None
    torch.testing.assert_close(scaled[12], whole[12] * 0.5)


def test_a_weight_of_zero_spares_the_flow_and_leaves_the_component_empty():
    from types import SimpleNamespace

    from vidanom.config import ScoreConfig, ScoreWeights
    from vidanom.scoring import Maps, PixelTerms

    logp = counts_of(moving(0.5)).log_probabilities(0.5)[None]
    cal = SimpleNamespace(bg_median=None, bg_spread=None, bg_quiet=None, dir_logp=logp)
    clip = moving(-0.5)
    maps = Maps(torch.zeros(24, SIZE, SIZE), torch.zeros(24, 16), torch.zeros(24, 16), frame=clip)
    on = PixelTerms(cal, ScoreConfig(top_k=2), None)(maps)[1]  # type: ignore[arg-type]
    off = PixelTerms(cal, ScoreConfig(top_k=2, weights=ScoreWeights(direction=0.0)), None)(maps)[1]  # type: ignore[arg-type]
    assert on is not None and float(on[1:].min()) > 1.0 and off is None
