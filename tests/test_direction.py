"""The direction component: Lucas-Kanade flow against a least-squares reference, direction bins and
speed classes, the places' histograms, and surprise at motion the training frames never showed in a
place, the wrong way or too fast."""

from __future__ import annotations

import math

import numpy as np
import torch

from vidanom.direction import (
    BINS,
    FASTER,
    RIDGE,
    SPEEDS,
    WINDOW,
    DirectionCounts,
    DirectionSurprise,
    _Motion,
    flow,
    polar,
    speed_classes,
    widen,
)

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
    assert counts.counts.shape == (BINS * SPEEDS, 16)
    busiest = counts.counts.sum(0).argmax()
    assert int(busiest) < 8  # the spot crossed the top half
    direction = counts.counts[:, busiest].view(BINS, SPEEDS).sum(1)
    assert int(direction.argmax()) == BINS // 2  # mostly to the right
    logp = counts.log_probabilities(1.0)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(16), rtol=1e-5, atol=1e-5)
    frame = counts.log_probabilities(0.0)  # no footage of its own: every place is the whole frame
    torch.testing.assert_close(frame, frame[:1].expand_as(frame))


def surprise_of(counts: DirectionCounts, weight: float, top_k: int = 2, interval: float | None = None):
    """The DirectionSurprise of one scene with these counts."""
    return DirectionSurprise(
        counts.log_probabilities(weight)[None], torch.tensor([counts.usual_speed()]), top_k, interval
    )


def test_motion_the_wrong_way_is_surprising_and_the_usual_way_is_not():
    counts = counts_of(torch.cat([moving(0.5), moving(0.6, y=9.0)]))
    usual = surprise_of(counts, 0.9)(moving(0.5, y=8.5), None, (SIZE, SIZE))
    wrong = surprise_of(counts, 0.9)(moving(-0.5, y=8.5), None, (SIZE, SIZE))
    still = surprise_of(counts, 0.9)(moving(0.0, y=8.5), None, (SIZE, SIZE))
    assert usual is not None and wrong is not None and still is not None
    assert usual.shape == (24, 1)
    assert float(still.abs().max()) < 1e-6  # nothing moves: nothing to be surprised at
    # the usual way counts next to nothing beyond the first frames (where the spot's start reads as a jump:
    # the spot's pixels move at several speeds, whose mixture differs a little from place to place); the
    # wrong way counts on every frame, tens of times more
    assert float(usual[4:].max()) < 0.1
    assert float(wrong[1:].min()) > 20 * float(usual[4:].max())


def test_motion_the_usual_way_but_faster_is_surprising():
    # a walker's pace along the path is normal; three times it (a cyclist) is not, though no direction is new
    counts = counts_of(torch.cat([moving(0.5), moving(0.6, y=9.0)]))
    assert 0.3 < counts.usual_speed() <= 0.6  # the spots' pace, to a quarter of an octave
    usual = surprise_of(counts, 0.9)(moving(0.5, y=8.5), None, (SIZE, SIZE))
    fast_clip = moving(1.5, frames=8, y=8.5)  # within the stretch the spots crossed in training
    fast = surprise_of(counts, 0.9)(fast_clip, None, (SIZE, SIZE))
    assert usual is not None and fast is not None
    assert float(fast[1:].min()) > 20 * float(usual[4:].max())
    # directions alone (a calibration of 0.6.1, widened as it loads) do not see it
    alone = counts.counts.view(BINS, SPEEDS, -1).sum(1)
    logp = ((alone + 1e-6) / (alone.sum(0) + BINS * 1e-6)).T.log().float()
    legacy = DirectionSurprise(widen(logp)[None], torch.tensor([float("nan")]), 2, None)(fast_clip, None, (SIZE, SIZE))
    assert legacy is not None and float(fast[1:].min()) > 20 * float(legacy.max())


def test_classes_merged_from_fine_bins_are_the_histogram_of_each_speeds_class():
    clip = torch.cat([moving(0.5), moving(1.3, frames=10, y=20.0), moving(-0.2, y=14.0)])
    counts = counts_of(clip)
    # the reference: every pixel's speed and direction, classed against the usual speed once it is known
    speed, bins = _Motion(None)(clip, None, (SIZE, SIZE))
    kinds = bins * SPEEDS + speed_classes(speed, counts.usual_speed())
    want = torch.zeros(BINS * SPEEDS, 16, dtype=torch.float64)
    place = (torch.arange(SIZE)[:, None] // 8 * 4 + torch.arange(SIZE)[None, :] // 8).expand_as(speed)
    want.index_put_((kinds.flatten(), place.flatten()), speed.flatten().double(), accumulate=True)
    torch.testing.assert_close(counts.counts, want, rtol=1e-9, atol=1e-9)
    # the usual speed is the speed-weighted median, to a quarter of an octave below
    order = speed.flatten().double().sort()
    half = order.values[(order.values.cumsum(0) >= order.values.sum() / 2).nonzero()[0]]
    assert float(half) / 2**0.25 <= counts.usual_speed() <= float(half)


def test_a_frame_of_unknown_speed_counts_nothing_in_the_histograms_and_scores_nan():
    clip = moving(0.5)
    counts = counts_of(clip)
    dt = torch.full((24,), 0.1)
    dt[10] = float("nan")  # a frame whose interval is not known: its speed is not either
    unknown = DirectionCounts(16, 0.1)
    unknown.add(clip, dt, (SIZE, SIZE), torch.ones(24, dtype=torch.bool))
    assert torch.isfinite(unknown.fine).all() and unknown.fine.sum() > 0
    assert float(unknown.fine.sum()) < float(counts.fine.sum())  # its frame counted nothing
    got = surprise_of(counts, 0.5, 3, 0.1)(clip, dt, (SIZE, SIZE))
    assert got is not None and got[10].isnan().all() and not got[11:].isnan().any()


def test_speed_classes_split_at_the_usual_speed_and_its_multiples():
    speed = torch.tensor([0.0, 0.29, 0.3, 0.59, 0.6, 1.19, 1.2, 5.0]).view(1, 1, -1)
    edges = [0.3 * FASTER**k for k in range(SPEEDS - 1)]
    want = [sum(float(v) >= e for e in edges) for v in speed.flatten()]
    assert speed_classes(speed, 0.3).flatten().tolist() == want
    assert want[:4] == [0, 0, 1, 1] and want[-1] == SPEEDS - 1
    assert speed_classes(speed, float("nan")).flatten().tolist() == [0] * 8


def test_a_widened_histogram_scores_every_speed_as_its_direction_alone_did():
    logp = torch.log_softmax(torch.randn(1, 16, BINS), -1)
    wide = widen(logp)
    assert wide.shape == (1, 16, BINS * SPEEDS)
    torch.testing.assert_close(wide.exp().sum(-1), torch.ones(1, 16))
    # the surprise beyond the entropy is the same, whatever speed class a pixel falls in
    clip = moving(-0.5)
    got = DirectionSurprise(wide, torch.tensor([0.01]), 3, None)(clip, None, (SIZE, SIZE))
    also = DirectionSurprise(wide, torch.tensor([100.0]), 3, None)(clip, None, (SIZE, SIZE))
    assert got is not None and also is not None and float(got.abs().max()) > 0.1
    torch.testing.assert_close(got, also)


def test_each_scene_is_scored_by_its_own_classes_beside_a_scene_of_directions_alone():
    slow, fast = counts_of(moving(0.3)), counts_of(moving(1.2))
    assert fast.usual_speed() > 2 * slow.usual_speed()
    alone = slow.counts.view(BINS, SPEEDS, -1).sum(1)
    legacy = widen(((alone + 1e-6) / (alone.sum(0) + BINS * 1e-6)).T.log().float())
    logp = torch.stack([legacy, fast.log_probabilities(0.5)])
    usual = torch.tensor([float("nan"), fast.usual_speed()])
    clip = moving(0.6, y=8.5)
    both = DirectionSurprise(logp, usual, 2, None)(clip, None, (SIZE, SIZE))
    one = DirectionSurprise(logp[1:], usual[1:], 2, None)(clip, None, (SIZE, SIZE))
    old = DirectionSurprise(logp[:1], usual[:1], 2, None)(clip, None, (SIZE, SIZE))
    assert both is not None and one is not None and old is not None and both.shape == (24, 2)
    torch.testing.assert_close(both, torch.cat([old, one], 1))


def test_calibrations_of_directions_alone_are_widened_as_they_load():
    from vidanom.normality import Calibration

    logp = torch.log_softmax(torch.randn(2, 16, BINS), -1)
    scales = {k: torch.zeros(2, 6) for k in ("comp_mean", "comp_std", "comp_low")}
    zeros = {k: torch.zeros(2, 16) for k in ("err_mean", "err_std", "kl_mean", "kl_std", "nll_mean", "nll_std")}
    cal = Calibration.from_dict(
        {**zeros, **scales, "still_floor": torch.zeros(2), "thresholds": torch.ones(2), "has_mdn": True,
         "scenes": ["a", "b"], "dir_logp": logp}
    )  # fmt: skip
    assert cal.dir_logp is not None and cal.dir_speed is not None
    torch.testing.assert_close(cal.dir_logp, widen(logp))
    assert cal.dir_speed.isnan().all() and cal.dir_speed.shape == (2,)


def test_without_histograms_there_is_no_direction():
    assert DirectionSurprise(None, None, 2, None)(moving(0.5), None, (SIZE, SIZE)) is None


def test_chunks_carry_the_frame_before_so_a_stream_scores_as_one_pass():
    counts = counts_of(moving(0.5))
    clip, dt = moving(-0.4), torch.full((24,), 0.1)
    whole = surprise_of(counts, 0.5, 3, 0.1)(clip, dt, (SIZE, SIZE))
    stream = surprise_of(counts, 0.5, 3, 0.1)
    parts = [stream(clip[s : s + 5], dt[s : s + 5], (SIZE, SIZE)) for s in range(0, 24, 5)]
    torch.testing.assert_close(torch.cat(parts), whole)  # type: ignore[arg-type]
    # a frame that comes two intervals late moved twice as far: its speed counts as the usual interval's
    late = dt.clone()
    late[12] = 0.2
    frames = clip.view(24, 1, SIZE, SIZE)
    on_time = _Motion(0.1)(clip, dt, (SIZE, SIZE))[0]
    scaled = _Motion(0.1)(clip, late, (SIZE, SIZE))[0]
    torch.testing.assert_close(scaled[12], on_time[12] * 0.5)
    torch.testing.assert_close(on_time[12], torch.hypot(*flow(frames[12:13], frames[11:12])[0]))


def test_a_weight_of_zero_spares_the_flow_and_leaves_the_component_empty():
    from types import SimpleNamespace

    from vidanom.config import ScoreConfig, ScoreWeights
    from vidanom.scoring import Maps, PixelTerms

    counts = counts_of(moving(0.5))
    logp, usual = counts.log_probabilities(0.5)[None], torch.tensor([counts.usual_speed()])
    cal = SimpleNamespace(bg_median=None, bg_spread=None, bg_quiet=None, dir_logp=logp, dir_speed=usual)
    clip = moving(-0.5)
    maps = Maps(torch.zeros(24, SIZE, SIZE), torch.zeros(24, 16), torch.zeros(24, 16), frame=clip)
    on = PixelTerms(cal, ScoreConfig(top_k=2), None)(maps)[1]  # type: ignore[arg-type]
    off = PixelTerms(cal, ScoreConfig(top_k=2, weights=ScoreWeights(direction=0.0)), None)(maps)[1]  # type: ignore[arg-type]
    assert on is not None and float(on[1:].min()) > 1.0 and off is None
