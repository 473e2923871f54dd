"""Scoring: causal smoothing, segments, components and their combination, and the streaming Scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidanom import fitting
from vidanom.mdn import LSTMMDN, MDNConfig, mdn_nll
from vidanom.config import ScoreConfig, ScoreWeights
from vidanom.normality import LEGACY_STILL_MARGIN, Calibration
from vidanom.scoring import (
    CausalMean,
    combine,
    components,
    iter_scores,
    Maps,
    pick_scene,
    scene_of,
    Scorer,
    segments,
    Smoother,
    standardise,
)
from vidanom.vae import BetaVAE, VAEConfig, error_map, kl_map

LAG = 2
N = 30


def causal_mean_reference(x: np.ndarray, window: int) -> np.ndarray:
    return np.array([x[max(0, t - window + 1) : t + 1].mean() for t in range(len(x))])


def feed(fn, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    bounds = np.cumsum([0] + sizes)
    assert bounds[-1] == len(x)
    return torch.cat([fn(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])


# -- CausalMean ------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 4, 40])
def test_causal_mean_in_chunks_equals_one_pass_and_reference(window):
    x = torch.randn(23, generator=torch.Generator().manual_seed(window))
    whole = CausalMean(window)(x)
    chunked = feed(CausalMean(window), x, [1, 2, 7, 13])
    ref = causal_mean_reference(x.numpy().astype(np.float64), window)
    np.testing.assert_allclose(whole.numpy(), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(chunked.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_causal_mean_never_looks_ahead():
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[12:] += 100.0
    a, b = CausalMean(5)(x), CausalMean(5)(y)
    torch.testing.assert_close(a[:12], b[:12])
    assert (b[12:] > a[12:] + 10).all()


def test_causal_mean_of_columns_leaves_nan_out():
    x = torch.randn(12, 2, 3, generator=torch.Generator().manual_seed(2))
    x[:4, :, 2] = float("nan")  # no LSTM-MDN surprise in a clip's first frames
    x[7, 1, 0] = float("nan")
    got = feed(CausalMean(3), x, [5, 7])
    for idx in np.ndindex(2, 3):
        col = x[(slice(None), *idx)].numpy().astype(np.float64)
        ref = np.array(
            [
                np.nanmean(col[max(0, t - 2) : t + 1]) if not np.isnan(col[max(0, t - 2) : t + 1]).all() else np.nan
                for t in range(12)
            ]
        )
        np.testing.assert_allclose(got[(slice(None), *idx)].numpy(), ref, rtol=1e-6, atol=1e-6)
    assert torch.isnan(got[:4, :, 2]).all() and not torch.isnan(got[4:]).any()


def test_causal_mean_treats_nonpositive_window_as_no_smoothing():
    x = torch.randn(6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(CausalMean(0)(x), x)


def test_smoother_smooths_every_component_but_the_frozen_run():
    # a frozen run of 6 frames, then motion again: a mean would hold frozen up after the run ends
    comp = torch.randn(14, 2, 5, generator=torch.Generator().manual_seed(3))
    comp[:, :, 4] = torch.tensor([0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0, 0, 0, 0, 0, 0])[:, None]
    got = feed(Smoother(5), comp, [3, 11])
    reference = CausalMean(5)(comp)
    torch.testing.assert_close(got[..., :4], reference[..., :4])
    torch.testing.assert_close(got[..., 4], comp[..., 4])
    assert (reference[8:12, :, 4] > 0).all()  # what the mean would have flagged after the run


# -- segments --------------------------------------------------------------------------------------


def test_segments_on_known_flags():
    flags = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=bool)
    scores = np.array([5, 6, 0, 9, 0, 0, 2, 8, 3, 0, 7, 7], dtype=float)
    segs = segments(flags, scores, min_len=2)
    assert [(s.start, s.end, s.peak_frame, s.peak_score) for s in segs] == [
        (0, 2, 1, 6.0),
        (6, 9, 7, 8.0),
        (10, 12, 10, 7.0),
    ]
    assert [(s.start, s.end) for s in segments(flags, scores, min_len=3)] == [(6, 9)]
    assert [(s.start, s.end) for s in segments(flags, scores, min_len=1)] == [(0, 2), (3, 4), (6, 9), (10, 12)]


def test_segments_of_no_and_all_flags():
    assert segments(np.zeros(5, dtype=bool), np.zeros(5), 1) == []
    (seg,) = segments(np.ones(5, dtype=bool), np.array([1.0, 3, 2, 0, 1]), 1)
    assert (seg.start, seg.end, seg.peak_frame) == (0, 5, 1)


# -- the streaming Scorer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vae = BetaVAE(VAEConfig(in_channels=2, height=16, width=16, hidden=(4, 8), latent_channels=2)).eval()
    mdn = LSTMMDN(MDNConfig(latent_dim=2, cells=16, hidden=8, mixtures=2, cell_embedding=3)).eval()
    return vae, mdn


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 16, 16, 1))
    steps = rng.integers(-20, 21, size=(N, 16, 16, 1)).cumsum(0)  # frames that drift, so differences matter
    return np.clip(base + steps, 0, 255).astype(np.uint8)


def reference_input(frames: np.ndarray, lag: int) -> torch.Tensor:
    """(n, 2, H, W): the frame in [0, 1] and its difference to frame max(t - lag, 0)."""
    x = torch.from_numpy(frames.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    prev = x[np.maximum(np.arange(len(x)) - lag, 0)]
    return torch.cat([x, x - prev], 1)


def run_scorer(models, frames: np.ndarray, size: int, warmup: int = 8):
    vae, mdn = models
    scorer = Scorer(vae, mdn, LAG, torch.device("cpu"), warmup=warmup)
    parts = [scorer.maps(frames[s : s + size]) for s in range(0, len(frames), size)]
    return tuple(torch.cat([getattr(m, k) for m in parts]) for k in ("err", "kl", "nll", "excess"))


def test_scorer_maps_against_a_direct_computation(models, frames):
    vae, mdn = models
    err, kl, nll, excess = run_scorer(models, frames, size=N)
    with torch.no_grad():
        x = reference_input(frames, LAG)
        recon, mu, logvar = vae(x, sample=False)
        z = mu.flatten(2).permute(2, 0, 1)  # (cells, n, D)
        log_pi, m, log_s, _ = mdn(z, torch.arange(16))
        ref_nll = mdn_nll(z[:, 1:], log_pi[:, :-1], m[:, :-1], log_s[:, :-1]).T  # frame t given frames < t
        # the excess: over the NLL of the mean of the predicted mixture's most likely component
        best = log_pi[:, :-1].argmax(-1)  # (cells, n-1)
        mode = torch.stack([m[c, t, best[c, t]] for c in range(16) for t in range(N - 1)]).view(16, N - 1, -1)
        ref_excess = ref_nll - mdn_nll(mode, log_pi[:, :-1], m[:, :-1], log_s[:, :-1]).T
    torch.testing.assert_close(err, error_map(x, recon), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kl, kl_map(mu, logvar).flatten(1), rtol=1e-4, atol=1e-5)
    assert nll.shape == (N, 16)
    assert torch.isnan(nll[:8]).all()  # warm-up: the LSTM has seen too little
    torch.testing.assert_close(nll[8:], ref_nll[7:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(excess[8:], ref_excess[7:], rtol=1e-4, atol=1e-4)
    assert torch.isnan(excess[:8]).all() and (excess[8:] > -1e-4).mean(dtype=torch.float) > 0.5


@pytest.mark.parametrize("size", [7, 1, 3])
def test_scorer_in_chunks_equals_one_pass(models, frames, size):
    whole = run_scorer(models, frames, size=N)
    chunked = run_scorer(models, frames, size=size)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.isnan(chunked[2][:8]).all() and not torch.isnan(chunked[2][8:]).any()


@pytest.mark.parametrize("size", [N, 4])
def test_scorer_scales_motion_by_the_frames_times(models, frames, size):
    vae, _ = models
    times = np.cumsum(np.where(np.arange(N) % 5 == 0, 0.4, 0.04)) - 0.4  # a long gap every 5 frames
    scorer = Scorer(vae, None, LAG, torch.device("cpu"))
    scorer.ref_dt = 0.04  # the hook: the training footage's usual frame interval
    err = torch.cat([scorer.maps(frames[s : s + size], times[s : s + size]).err for s in range(0, N, size)])
    span = times - times[np.maximum(np.arange(N) - LAG, 0)]  # the time each difference spans
    x = reference_input(frames, LAG)
    x[:, 1:] *= torch.from_numpy(np.clip(LAG * 0.04 / np.maximum(span, 1e-12), 1 / 8, 1)).float()[:, None, None, None]
    with torch.no_grad():
        expected = error_map(x, vae(x, sample=False)[0])
    torch.testing.assert_close(err, expected, rtol=1e-4, atol=1e-5)
    # without ref_dt the times change nothing
    unscaled = run_scorer((vae, None), frames, N)[0]
    torch.testing.assert_close(Scorer(vae, None, LAG, torch.device("cpu")).maps(frames, times).err, unscaled)
    assert not torch.allclose(err, unscaled, rtol=1e-3, atol=1e-4)


def test_scorer_without_mdn_has_no_surprise(models, frames):
    scorer = Scorer(models[0], None, LAG, torch.device("cpu"))
    assert torch.isnan(scorer.maps(frames[:5]).nll).all()


@pytest.fixture(scope="module")
def calibration():
    """Statistics of two scenes."""
    g = torch.Generator().manual_seed(4)
    comp_mean, comp_low = torch.randn(2, 6, generator=g) - 4, torch.rand(2, 6, generator=g) + 0.2
    return Calibration(
        err_mean=torch.rand(2, 9, generator=g),
        err_std=torch.rand(2, 9, generator=g) + 0.5,
        kl_mean=torch.rand(2, 16, generator=g),
        kl_std=torch.rand(2, 16, generator=g) + 0.5,
        nll_mean=torch.rand(2, 16, generator=g),
        nll_std=torch.rand(2, 16, generator=g) + 0.5,
        comp_mean=comp_mean,
        comp_std=torch.rand(2, 6, generator=g) + 0.5,
        comp_low=comp_low,
        still_floor=comp_mean[:, 3] - LEGACY_STILL_MARGIN * comp_low[:, 3],
        thresholds=torch.tensor([0.5, 1.5]),
        has_mdn=True,
        scenes=["day", "night"],
    )


def test_components_and_combine_against_hand_computation(models, frames, calibration):
    cal, weights = calibration, ScoreWeights(recon=1.0, kl=0.5, nll=2.0, still=0.7, frozen=1.5, direction=0.3)
    sc = ScoreConfig(patch=8, patch_stride=4, top_k=3, weights=weights)
    err, kl, nll, excess = run_scorer(models, frames, size=N)
    g = torch.Generator().manual_seed(5)
    frozen, direction = torch.rand(N, 2, generator=g) * 8 - 4, torch.rand(N, 2, generator=g) - 0.5  # per scene
    comp = components(Maps(err, kl, nll, excess), cal, sc, frozen, direction)
    assert comp.shape == (N, 2, 6)
    torch.testing.assert_close(comp[..., 4], frozen)  # as measured (vidanom.frozen), for each scene
    torch.testing.assert_close(comp[..., 5], direction)  # as measured (vidanom.direction)
    assert torch.isnan(components(Maps(err, kl, nll, excess), cal, sc)[..., 4:]).all()  # none measured
    # 8x8 windows 4 apart on 16x16 frames: 3 x 3 of them, each z-scored at its own position
    windows = np.stack([err[:, r : r + 8, c : c + 8].mean((1, 2)).numpy() for r in (0, 4, 8) for c in (0, 4, 8)], 1)
    for s in range(2):  # every scene against its own statistics
        z = (windows - cal.err_mean[s].numpy()) / cal.err_std[s].numpy()
        np.testing.assert_allclose(comp[:, s, 0].numpy(), np.sort(z, 1)[:, -3:].mean(1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            comp[:, s, 1].numpy(), ((kl - cal.kl_mean[s]) / cal.kl_std[s]).numpy().max(1), rtol=1e-6
        )
        assert torch.isnan(comp[:8, s, 2]).all()
        nz = ((nll[8:] - cal.nll_mean[s]) / cal.nll_std[s]).numpy()
        np.testing.assert_allclose(comp[8:, s, 2].numpy(), np.sort(nz, 1)[:, -3:].mean(1), rtol=1e-5, atol=1e-6)
        # still: the same for every scene, log(1 + mean of the 3 largest excesses, negatives as 0)
        top = np.sort(np.maximum(excess[8:].numpy(), 0.0), 1)[:, -3:].mean(1)
        np.testing.assert_allclose(comp[8:, s, 3].numpy(), np.log1p(top), rtol=1e-5, atol=1e-6)
        assert torch.isnan(comp[:8, s, 3]).all()
    ref = np.nansum(reference_standardise(comp, cal) * np.array([1.0, 0.5, 2.0, 0.7, 1.5, 0.3]), 2)  # NaN adds nothing
    combined = combine(comp, cal, weights)
    np.testing.assert_allclose(combined.numpy(), ref, rtol=1e-5, atol=1e-5)
    best, score, scene = pick_scene(comp, combined, None)  # without Gaussians: the scene of the lowest score
    np.testing.assert_allclose(score.numpy(), ref.min(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(best, comp[torch.arange(N), torch.as_tensor(ref.argmin(1))], equal_nan=True)
    assert 0 < scene.sum() < N, "the fixture should exercise both scenes"
    given = torch.arange(N) % 2
    best, score, scene = pick_scene(comp, combined, given)
    assert torch.equal(scene, given)
    np.testing.assert_allclose(score.numpy(), ref[np.arange(N), given.numpy()], rtol=1e-5, atol=1e-5)


def reference_standardise(comp: torch.Tensor, cal: Calibration) -> np.ndarray:
    """(..., 6): recon, kl, nll, frozen and direction above the median in upper scales; still below the
    floor in its lower scale."""
    c, m, hi, lo = (t.numpy().astype(np.float64) for t in (comp, cal.comp_mean, cal.comp_std, cal.comp_low))
    still = (cal.still_floor.numpy().astype(np.float64) - c[..., 3]) / lo[..., 3]
    up = np.maximum((c - m) / hi, 0.0)
    z = np.concatenate([up[..., :3], np.maximum(still, 0.0)[..., None], up[..., 4:]], -1)
    return np.nan_to_num(z, nan=0.0)


def test_standardise_counts_too_little_change_but_not_too_little_error(calibration):
    low = torch.tensor([[0.5, 0.5, 0.5, 0.25, 0.5, 0.5], [1.0, 1.0, 1.0, 2.0, 1.0, 1.0]])
    m = calibration.comp_mean[0]
    floor = torch.stack([m[3] - 0.5, calibration.comp_mean[1, 3]])
    cal = Calibration(**calibration.to_dict() | {"comp_low": low, "still_floor": floor})
    comp = torch.stack([m + 3 * cal.comp_std[0], m - 3.0, m - 1.0, m - 0.1]).unsqueeze(1).expand(4, 2, 6)
    z = standardise(comp, cal)[:, 0]
    torch.testing.assert_close(z[0], torch.tensor([3.0, 3.0, 3.0, 0.0, 3.0, 3.0]))  # above: in upper scales, not still
    # below the median only stillness counts, in its lower scale, below its floor
    torch.testing.assert_close(z[1], torch.tensor([0.0, 0.0, 0.0, 2.5 / 0.25, 0.0, 0.0]))
    torch.testing.assert_close(z[2], torch.tensor([0.0, 0.0, 0.0, 0.5 / 0.25, 0.0, 0.0]))
    torch.testing.assert_close(z[3], torch.zeros(6))  # above the floor: nothing
    np.testing.assert_allclose(standardise(comp, cal).numpy(), reference_standardise(comp, cal), rtol=1e-6, atol=1e-6)
    assert standardise(torch.full((1, 2, 6), float("nan")), cal).eq(0).all()


def test_calibrations_made_before_the_still_floor_count_stillness_as_then(calibration):
    old = calibration.to_dict()
    del old["still_floor"]
    cal = Calibration.from_dict(old)
    comp = calibration.comp_mean[None] - torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0, 0.0])  # 5 below the median
    m, lo = calibration.comp_mean[:, 3], calibration.comp_low[:, 3]
    then = (5.0 / lo - LEGACY_STILL_MARGIN).clamp_min(0.0)  # a margin of 4 lower scales below the median
    torch.testing.assert_close(standardise(comp, cal)[0, :, 3], then)
    assert (then > 0).any() and torch.allclose(cal.still_floor, m - LEGACY_STILL_MARGIN * lo)


def test_scene_of_picks_the_scene_whose_frames_it_lies_closest_to(calibration):
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(2, 16, generator=g)
    std = torch.rand(2, 16, generator=g) + 0.1
    cal = Calibration(**calibration.to_dict() | {"frame_mean": mean, "frame_std": std})
    frame = torch.rand(300, 16, generator=g)
    maps = Maps(torch.zeros(300, 4, 4), torch.zeros(300, 16), torch.zeros(300, 16), frame=frame)
    ref = np.stack([(((frame - m) / s) ** 2).sum(1).numpy() for m, s in zip(mean, std)]).argmin(0)
    got = scene_of(maps, cal)
    assert np.array_equal(got.numpy(), ref) and 0 < got.sum() < 300
    assert scene_of(maps, calibration) is None  # no frame statistics stored: the caller falls back


def test_calibration_threshold_and_the_scenes_of_an_update(calibration):
    from conftest import tiny_config

    from vidanom import carry

    assert calibration.threshold == 1.5  # no scene's normal frames may flag more than its quantile
    mine = Calibration.from_dict(
        {k: v[1:] if isinstance(v, torch.Tensor) else v for k, v in calibration.to_dict().items()}
        | {"scenes": ["dawn"]}
    )
    vae = BetaVAE(tiny_config().vae_config())
    merged, _ = carry.after_update(None, vae, calibration, mine, ["day", "dawn"], tiny_config())
    assert merged.scenes == ["day", "dawn"]  # "night" was dropped from the lineage
    torch.testing.assert_close(merged.err_mean, torch.stack([calibration.err_mean[0], calibration.err_mean[1]]))
    # the old scene is scored with every component, as it was measured
    for key in ("comp_mean", "comp_std", "comp_low", "still_floor", "thresholds"):
        torch.testing.assert_close(getattr(merged, key), getattr(calibration, key)[:2])
    relearned = Calibration.from_dict(mine.to_dict() | {"scenes": ["day"]})
    again, _ = carry.after_update(None, vae, calibration, relearned, ["night", "day"], tiny_config())
    assert again.scenes == ["night", "day"]
    torch.testing.assert_close(again.err_mean[1], relearned.err_mean[0])  # the new "day" wins


def test_iter_scores_in_chunks_equals_one_pass(models, frames, calibration):
    def run(size: int):
        scorer = Scorer(models[0], models[1], LAG, torch.device("cpu"))
        chunks = (frames[s : s + size] for s in range(0, N, size))
        sc = ScoreConfig(patch=8, patch_stride=4, top_k=2, weights=ScoreWeights(1.0, 0.5, 1.0, 2.0), smooth=4)
        out = list(iter_scores(scorer, chunks, calibration, sc))
        return tuple(torch.cat([o[i] for o in out]) for i in range(3))

    comp_whole, scene_whole, score_whole = run(N)
    comp_7, scene_7, score_7 = run(7)
    torch.testing.assert_close(comp_7, comp_whole, rtol=1e-4, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(score_7, score_whole, rtol=1e-4, atol=1e-4)
    assert torch.equal(scene_7, scene_whole)
    # the score: every scene's components smoothed, standardised, weighted; the frame's scene's counts
    err, kl, nll, excess = run_scorer(models, frames, size=N)
    comp = components(Maps(err, kl, nll, excess), calibration, ScoreConfig(patch=8, patch_stride=4, top_k=2)).numpy()
    smoothed = np.stack(
        [
            [
                [np.nanmean(c) if not np.isnan(c).all() else np.nan for c in comp[max(0, t - 3) : t + 1, s].T]
                for s in range(2)
            ]
            for t in range(N)
        ]
    )
    z = reference_standardise(torch.from_numpy(smoothed), calibration)
    ref = (z * np.array([1.0, 0.5, 1.0, 2.0, 2.0, 0.5])).sum(2)[np.arange(N), scene_whole.numpy()]
    np.testing.assert_allclose(score_whole.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_training_latents_match_the_scorers_across_batches(models, frames, monkeypatch):
    # fitting.encode feeds the LSTM-MDN in batches; its motion context must cross batch borders like the Scorer's
    vae = models[0]
    monkeypatch.setattr(fitting, "INFER_BATCH", 7)
    z = fitting.encode(vae, frames, LAG, torch.device("cpu"))
    with torch.no_grad():
        mu, _ = vae.encode(reference_input(frames, LAG))
    assert z.shape == (16, N, 2)
    torch.testing.assert_close(z, mu.flatten(2).permute(2, 0, 1), rtol=1e-4, atol=1e-5)
