"""Calibration: statistics of each place shrunk by the footage's length, the components' two-sided scales
and the threshold on held-out blocks, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom

from vidanom.calibration import (
    CONFIDENCE,
    MIN_SCALE,
    RunningStats,
    choose_threshold,
    confident_rank,
    held_blocks,
    shrink,
    shrink_weight,
    split_scales,
    trust_warnings,
)
from vidanom.data import Split
from vidanom.scoring import STILL_UNIT


def test_running_stats_against_numpy_and_skips_rows_with_nan():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.arange(1, 7) + np.arange(6)
    with_nan = x.copy()
    with_nan[[3, 17], [2, 0]] = np.nan  # rows 3 and 17 must be left out entirely
    stats = RunningStats()
    for a, b in [(0, 10), (10, 11), (11, 40)]:
        stats.add(torch.from_numpy(with_nan[a:b]).float())
    keep = np.delete(x, [3, 17], axis=0).astype(np.float32).astype(np.float64)
    mean, std = stats.result()
    assert stats.n == 38
    np.testing.assert_allclose(mean.numpy(), keep.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), keep.std(0), rtol=1e-4)


def test_running_stats_floors_the_std_of_constant_positions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    x[:, 1] = 3.0  # a pixel that never changes
    stats = RunningStats()
    stats.add(torch.from_numpy(x))
    _, std = stats.result()
    stds = x.std(0)
    assert std[1].item() == pytest.approx(0.05 * stds.mean(), rel=1e-5)
    np.testing.assert_allclose(std.numpy()[[0, 2, 3]], stds[[0, 2, 3]], rtol=1e-5)


def test_running_stats_without_data_raises():
    stats = RunningStats()
    stats.add(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError):
        stats.result()


def test_shrink_against_a_hand_computation():
    mean, std = torch.tensor([1.0, 3.0, 8.0]), torch.tensor([0.1, 1.0, 2.0])
    # every place pooled: mean 4, variance of a value at a random place mean(std² + (mean − 4)²)
    pooled_var = ((0.01 + 9) + (1 + 1) + (4 + 16)) / 3
    w = 0.25
    m, s = shrink(mean, std, w)
    np.testing.assert_allclose(m.numpy(), [0.25 * 1 + 0.75 * 4, 0.25 * 3 + 0.75 * 4, 0.25 * 8 + 0.75 * 4], rtol=1e-6)
    np.testing.assert_allclose(
        s.numpy() ** 2,
        [0.25 * 0.01 + 0.75 * pooled_var, 0.25 * 1 + 0.75 * pooled_var, 0.25 * 4 + 0.75 * pooled_var],
        rtol=1e-5,
    )
    kept = shrink(mean, std, 1.0)
    torch.testing.assert_close(kept[0], mean)
    torch.testing.assert_close(kept[1], std)
    pooled = shrink(mean[None].expand(2, 3), std[None].expand(2, 3), 0.0)  # per row: (scenes, places)
    torch.testing.assert_close(pooled[0], torch.full((2, 3), 4.0))
    torch.testing.assert_close(pooled[1], torch.full((2, 3), pooled_var**0.5))


def test_shrink_weight_grows_with_the_footage():
    assert shrink_weight(40.0, 300.0) == pytest.approx(40 / 340)
    assert shrink_weight(3000.0, 300.0) == pytest.approx(3000 / 3300)
    assert shrink_weight(10.0, 0.0) == 1.0  # no prior: the places' own statistics


def test_split_scales_against_numpy():
    rng = np.random.default_rng(3)
    x = np.stack(
        [rng.exponential(size=501), rng.normal(size=501), np.full(501, np.nan), rng.normal(size=501) * 0.01], 1
    )
    x[::7, 1] = np.nan
    median, low, high = split_scales(torch.from_numpy(x))
    assert low[3] == high[3] == MIN_SCALE  # no component of z-scores spreads less
    for j in range(2):
        col = x[:, j][~np.isnan(x[:, j])]
        m = np.median(col)
        assert median[j].item() == pytest.approx(m, rel=1e-6)
        assert low[j].item() == pytest.approx(np.sqrt(np.mean((col[col < m] - m) ** 2)), rel=1e-5)
        assert high[j].item() == pytest.approx(np.sqrt(np.mean((col[col > m] - m) ** 2)), rel=1e-5)
    assert high[0] > 2 * low[0]  # a long upper tail, a short lower one
    assert median[2] == 0 and low[2].isinf() and high[2].isinf()  # no values: it counts for nothing


def reference_rank(n: int, target: float) -> int:
    """The most j with P(binomial(n, target) <= j) <= 1 - CONFIDENCE, by scipy; 0 where there is none."""
    sure = np.flatnonzero(binom.cdf(np.arange(n + 1), n, target) <= 1.0 - CONFIDENCE)
    return int(sure[-1]) if len(sure) else 0


@pytest.mark.parametrize("n, target", [(100, 0.01), (250, 0.01), (1400, 0.01), (20000, 0.01), (500, 0.1)])
def test_confident_rank_against_scipys_binomial(n, target):
    assert confident_rank(n, target) == reference_rank(n, target)


def test_choose_threshold_is_confident_and_estimates_block_by_block():
    rng = np.random.default_rng(4)
    blocks = [torch.from_numpy(rng.normal(size=n)) for n in (300, 200, 250)]
    blocks.append(torch.from_numpy(rng.normal(size=150) + 3.0))  # a busy block unlike the rest
    threshold, rate = choose_threshold(blocks, 0.1)

    def upper(x: np.ndarray) -> float:  # the (rank + 1)-th largest
        return float(np.sort(x)[::-1][reference_rank(len(x), 0.1)])

    every = np.concatenate([b.numpy() for b in blocks])
    assert threshold == upper(every) and np.mean(every > threshold) < 0.1  # stricter than the plain quantile
    expected = 0.0
    for i, b in enumerate(blocks):
        rest = np.concatenate([c.numpy() for j, c in enumerate(blocks) if j != i])
        expected += len(b) * np.mean(b.numpy() > upper(rest))
    assert rate == pytest.approx(expected / len(every), rel=1e-9)
    assert rate > 0.1  # the busy block left out is flagged almost whole: the estimate says so
    alike = [torch.from_numpy(rng.normal(size=400)) for _ in range(4)]
    assert 0.06 < choose_threshold(alike, 0.1)[1] < 0.1  # alike blocks: under the target, not far under
    with pytest.raises(ValueError):
        choose_threshold(blocks[:1], 0.05)


@pytest.mark.parametrize("held", [50, 229, 230, 1400])
def test_trust_warnings_say_how_sure_a_threshold_on_few_held_out_frames_is(held):
    sure = 1.0 - binom.cdf(0, held, 0.01)  # that the largest of `held` scores lies above the 99th percentile
    (*warned,) = trust_warnings(600.0, held, 0.01, 0.01)
    if sure < CONFIDENCE:  # 229 frames are not quite 90% sure, 230 are
        assert len(warned) == 1 and f"only {held} held-out" in warned[0] and f"{100 * sure:.0f}% sure" in warned[0]
    else:
        assert warned == []


def test_trust_warnings_for_short_or_uneven_footage():
    short, uneven = trust_warnings(30.0, 1400, 0.01, 0.01), trust_warnings(600.0, 1400, 0.03, 0.01)
    assert len(short) == 1 and "only 30 s" in short[0]
    assert len(uneven) == 1 and "3.0% of new normal frames may be flagged" in uneven[0]
    assert trust_warnings(600.0, 1400, 0.02, 0.01) == []  # up to twice the target is let pass


def test_held_blocks_cut_few_runs_into_enough_blocks():
    split = Split([100, 40], [[(20, 40)], []])
    blocks = held_blocks(split)
    assert blocks == [(0, 20, 25), (0, 25, 30), (0, 30, 35), (0, 35, 40)]
    many = Split([10] * 5, [[(0, 10)]] * 5)
    assert held_blocks(many) == [(i, 0, 10) for i in range(5)]  # whole clips stay whole


def test_calibrate_takes_place_statistics_from_training_frames_and_scales_from_held_out_ones():
    from conftest import tiny_config

    from vidanom.calibration import MIN_DIRECTION_UNIT, Footage, calibrate
    from vidanom.direction import DirectionSurprise
    from vidanom.frozen import FrozenRuns
    from vidanom.mdn import LSTMMDN
    from vidanom.scoring import CausalMean, components, make_scorer
    from vidanom.vae import BetaVAE, patch_means

    cfg = tiny_config()
    torch.manual_seed(0)
    vae, mdn = BetaVAE(cfg.vae_config()).eval(), LSTMMDN(cfg.mdn_config()).eval()
    rng = np.random.default_rng(0)
    quiet = rng.integers(100, 110, (60, 32, 32, 1), dtype=np.uint8)
    busy = rng.integers(0, 256, (60, 32, 32, 1), dtype=np.uint8)  # unlike anything in training
    clips = [quiet, busy, quiet.copy(), quiet[::-1].copy(), busy[::-1].copy()]
    split = Split.blocks([60] * 5, [25.0] * 5, 0.4, 5.0)  # whole clips: 1 and 3 held out
    assert [c for c, _, _ in split.runs(held=True)] == [1, 3]
    footage = Footage(clips, [25.0] * 5, split)
    cal = calibrate(vae, mdn, footage, cfg, torch.device("cpu"), "default")

    scorer = make_scorer(vae, mdn, cfg, torch.device("cpu"))
    errs = []
    for c in (0, 2, 4):  # the training clips alone give each place's statistics
        scorer.reset()
        errs.append(patch_means(scorer.maps(clips[c]).err, cfg.score.patch, cfg.score.patch_stride))
    err = torch.cat(errs).double()
    w = shrink_weight(180 / 25.0, cfg.score.shrink_seconds)
    mean, std = shrink(err.mean(0).float(), err.std(0, unbiased=False).float(), w)
    torch.testing.assert_close(cal.err_mean[0], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cal.err_std[0], std, rtol=1e-4, atol=1e-5)
    # the usual picture: the training frames' per-pixel (lower) median and median absolute deviation
    train = np.concatenate([clips[c] for c in (0, 2, 4)]).reshape(180, -1).astype(np.float64) / 255
    lower_median = np.sort(train, 0)[(len(train) - 1) // 2]
    np.testing.assert_allclose(cal.bg_median[0].numpy(), lower_median, atol=1e-6)
    mad = np.sort(np.abs(train - lower_median), 0)[(len(train) - 1) // 2] * 1.4826
    np.testing.assert_allclose(cal.bg_spread[0].numpy(), mad, rtol=1e-4, atol=1e-6)
    smoothed = []
    for c in (1, 3):  # the held-out clips alone give the components' scales
        scorer.reset()
        maps = scorer.maps(clips[c])
        frozen = FrozenRuns(cal)(maps.frame, maps.dt, maps.err.shape[1:])
        direction = DirectionSurprise(cal.dir_logp, cal.dir_speed, cfg.score.top_k, scorer.interval)(
            maps.frame, maps.dt, maps.err.shape[1:]
        )
        comp = components(maps, cal, cfg.score, frozen, direction)
        mean = CausalMean(cfg.score.smooth)(comp)
        mean[..., 4] = comp[..., 4]  # frozen, a run's length, is not smoothed
        smoothed.append(mean[:, 0])
    held = torch.cat(smoothed)
    assert not held[:, 4:].isnan().any()  # frozen and direction are measured on every held-out frame
    median, low, high = split_scales(held)
    # frozen counts beyond the held-out runs (the threshold's rule: of so few frames, the longest), in frame
    # intervals (1 s: untimed footage); direction beyond the held-out values by the same rule, in their spread
    median[4], high[4] = held[:, 4].max(), 1.0
    d = held[:, 5].double()
    above = d[d > d.median()] - d.median()
    median[5], high[5] = d.max(), max(float(above.pow(2).mean().sqrt()), MIN_DIRECTION_UNIT)
    torch.testing.assert_close(cal.comp_mean[0], median.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cal.comp_std[0], high.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cal.comp_low[0, :3], low[:3].float(), rtol=1e-4, atol=1e-4)
    # stillness counts in a fixed unit below the stillest held-out frames
    assert float(cal.comp_low[0, 3]) == pytest.approx(STILL_UNIT)
    still = np.sort(held[:, 3].numpy()[~held[:, 3].isnan().numpy()])  # the threshold's rule, from below
    np.testing.assert_allclose(
        float(cal.still_floor[0]), still[reference_rank(len(still), cfg.score.false_alarms)], rtol=1e-4
    )
    assert cal.false_alarms is not None and 0 <= float(cal.false_alarms[0]) <= 1
    assert any("only 12 s" in w for w in footage.warnings)


def test_a_calibration_and_a_train_result_are_built_whole_and_never_changed(trained_project):
    import dataclasses

    from vidanom.detector import Detector
    from vidanom.normality import Calibration
    from vidanom.training import TrainResult

    cal = Detector.load(trained_project).calibration
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.thresholds = torch.zeros(1)  # type: ignore[misc]
    with pytest.raises(TypeError):  # every part is named and none is left to fill in later
        Calibration(cal.err_mean, cal.err_std)  # type: ignore[misc]
    required = {f.name for f in dataclasses.fields(TrainResult) if f.default is dataclasses.MISSING}
    assert required == {f.name for f in dataclasses.fields(TrainResult)}  # no placeholder defaults
    assert TrainResult.__dataclass_params__.frozen  # type: ignore[attr-defined]
