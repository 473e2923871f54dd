"""The `frozen` component: places that stop changing below the camera's noise (vidanom.frozen)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vidanom.config import MaskConfig
from vidanom.frozen import MAD_TO_STD, FrozenRuns, _runs, background
from vidanom.zones import Zones

SIZE, DT = 32, 0.1  # frames of 32 x 32 pixels, 10 a second


def scene(n: int, seed: int, stand: tuple[int, int] | None = None) -> np.ndarray:
    """(n, 32, 32, 1) uint8: a textured ground with the camera's noise, and an 8 x 8 bright square
    walking left to right along rows 12-20 (standing at column stand[1] from frame stand[0] on)."""
    rng = np.random.default_rng(seed)
    ground = np.random.default_rng(0).uniform(60, 120, (SIZE, SIZE))
    out = np.empty((n, SIZE, SIZE, 1), np.uint8)
    for i in range(n):
        x = (2 * i) % (SIZE - 8) if stand is None or i < stand[0] else stand[1]
        img = ground.copy()
        img[12:20, x : x + 8] = 220
        out[i, ..., 0] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).round()
    return out


def usual(seed: int = 1) -> SimpleNamespace:
    """What FrozenRuns reads of a calibration: the usual picture of 200 training frames of the scene."""
    clip = scene(200, seed)
    median, spread, quiet = background([clip], np.stack([np.zeros(200, int), np.arange(200)], 1))
    return SimpleNamespace(bg_median=median[None], bg_spread=spread[None], bg_quiet=quiet[None])


def run(places: SimpleNamespace, frames: np.ndarray, chunk: int = 64, zones: Zones | None = None) -> np.ndarray:
    """(n,) seconds of the longest-frozen place of each frame, fed `chunk` frames at a time."""
    runs, out = FrozenRuns(places), []  # type: ignore[arg-type]
    for s in range(0, len(frames), chunk):
        x = torch.from_numpy(frames[s : s + chunk]).permute(0, 3, 1, 2).float().div(255).flatten(1)
        dt = torch.full((len(x),), DT)
        if s == 0:
            dt[0] = 0.0
        got = runs(x, dt, (SIZE, SIZE), zones)
        assert got is not None
        out.append(got[:, 0].numpy())
    return np.concatenate(out)


def box_mean(x: np.ndarray) -> np.ndarray:
    """3 x 3 mean of each pixel of (..., H, W), over the pixels inside the frame."""
    pad = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], constant_values=np.nan)
    h, w = x.shape[-2:]
    return np.nanmean(np.stack([pad[..., i : i + h, j : j + w] for i in range(3) for j in range(3)]), 0)


def test_the_usual_picture_is_the_footages_median_its_spread_and_its_median_change():
    clip = scene(50, 3)
    index = np.stack([np.zeros(50, int), np.arange(50)], 1)
    median, spread, quiet = background([clip], index)
    x = clip[..., 0].astype(np.float64) / 255
    lower = np.sort(x, 0)[24]  # torch's median of an even count is the lower of the two middle values
    np.testing.assert_allclose(median.numpy(), lower.ravel(), atol=1e-6)
    np.testing.assert_allclose(spread.numpy(), (np.sort(np.abs(x - lower), 0)[24] * MAD_TO_STD).ravel(), atol=1e-5)
    change = box_mean(np.abs(np.diff(x, axis=0)))  # each frame against the one before it
    assert float(quiet) == pytest.approx(float(np.sort(change.ravel())[(change.size - 1) // 2]), rel=1e-5)


def test_a_frozen_region_counts_its_seconds_and_a_person_standing_still_does_not():
    places = usual()
    frames = scene(120, 7)
    frames[40:70, 10:22, 4:16] = frames[40, 10:22, 4:16]  # a region copied from one frame: no noise
    got = run(places, frames)
    assert got[:40].max() < 0.35  # the walking square never stays put
    # from the frame after the one it was copied from, every frame adds its 0.1 s
    np.testing.assert_allclose(got[41:70], np.arange(1, 30) * DT, atol=1e-5)
    assert got[72:].max() < 0.35  # and it starts again from nothing once the region lives again
    standing = run(places, scene(120, 7, stand=(40, 10)))  # stops at column 10, with the camera's noise
    assert standing[40:].max() < 0.35 < got.max()


def test_a_whole_frozen_picture_counts_only_where_it_differs_from_the_usual_picture():
    places = usual()
    frames = scene(80, 8)
    frames[30:] = frames[30]  # a stalled camera
    got = run(places, frames)
    np.testing.assert_allclose(got[31:], np.arange(1, 50) * DT, atol=1e-5)  # the square, frozen mid-walk
    ground = frames.copy()
    ground[30:] = np.median(scene(200, 1), 0).round().astype(np.uint8)  # the usual picture itself, frozen
    assert run(places, ground)[31:].max() < 0.35


def test_in_chunks_as_in_one_pass_and_not_inside_a_zone_to_ignore():
    places = usual()
    frames = scene(90, 9)
    frames[20:60, 10:22, 14:26] = frames[20, 10:22, 14:26]  # the square stood at columns 16-24
    whole = run(places, frames, chunk=90)
    np.testing.assert_allclose(run(places, frames, chunk=7), whole, atol=1e-6)  # state carries across chunks
    zone = MaskConfig(SIZE, SIZE, (((8.0, 8.0), (32.0, 8.0), (32.0, 24.0), (8.0, 24.0)),))
    hidden = run(places, frames, zones=Zones.of(zone, SIZE, SIZE, 8))
    assert hidden.max() < 0.35 < whole.max()


def test_a_calibration_without_a_usual_picture_measures_nothing():
    none = SimpleNamespace(bg_median=None, bg_spread=None, bg_quiet=None)
    x = torch.rand(4, SIZE * SIZE)
    assert FrozenRuns(none)(x, torch.ones(4), (SIZE, SIZE)) is None  # type: ignore[arg-type]


def test_a_scene_calibrated_before_the_usual_picture_scores_0_beside_one_that_has_it():
    """An update of a project calibrated by an earlier release: the new scene has a usual picture, the
    old one has none (and cannot be measured again: its frames are not read), so it alone scores 0."""
    from vidanom import carry
    from vidanom.normality import Calibration

    def calibration(scene: str, places: SimpleNamespace | None) -> Calibration:
        zeros, ones = torch.zeros(1, 4), torch.ones(1, 4)
        return Calibration(
            **{f"{k}_{s}": zeros if s == "mean" else ones for k in ("err", "kl", "nll") for s in ("mean", "std")},
            comp_mean=torch.zeros(1, 5),
            comp_std=torch.ones(1, 5),
            comp_low=torch.ones(1, 5),
            still_floor=torch.zeros(1),
            thresholds=torch.ones(1),
            has_mdn=True,
            scenes=[scene],
            **({} if places is None else vars(places)),
        )

    old, new = calibration("old", None), calibration("new", usual())
    both = carry.stacked([carry.rows(old, ["old"]), carry.rows(new, ["new"])])
    assert both.bg_median is not None and both.bg_median[0].isnan().all() and not both.bg_median[1].isnan().any()
    frames = scene(60, 8)
    frames[20:] = frames[20]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).flatten(1)
    got = FrozenRuns(both)(x, torch.full((60,), DT), (SIZE, SIZE))
    assert got is not None and torch.equal(got[:, 0], torch.zeros(60)) and float(got[-1, 1]) > 3.0


def test_run_scale_is_the_threshold_rule_on_held_out_runs_in_frame_intervals():
    from vidanom.calibration import confident_rank, run_scale

    few = torch.tensor([0.0, 0.1, float("nan"), 0.3, 0.0])
    assert run_scale(few, 0.04, 0.01) == pytest.approx((0.3, 0.04))  # few frames: their longest run
    many = torch.zeros(2000)
    many[-20:] = torch.arange(1, 21) * 0.04  # runs of 1 to 20 frames in 1% of the frames
    offset, unit = run_scale(many, 0.04, 0.01)
    assert confident_rank(2000, 0.01) > 0 and offset == pytest.approx(0.04 * (20 - confident_rank(2000, 0.01)))
    assert unit == 0.04
    assert run_scale(torch.full((3,), float("nan")), 0.04, 0.01) is None  # no usual picture: nothing to scale


def test_a_calibration_counts_frozen_beyond_the_held_out_footages_longest_run():
    """A held-out clip whose picture holds for three frames (0.3 s at 10 frames a second): frozen then
    counts from 0.3 s on (the longest run of so few held-out frames), a frame interval to a unit, and a
    longer freeze is scored by the excess."""
    from conftest import tiny_config

    from vidanom.calibration import Footage, calibrate
    from vidanom.data import Split, Timing
    from vidanom.mdn import LSTMMDN
    from vidanom.scoring import standardise
    from vidanom.vae import BetaVAE

    cfg = tiny_config()
    torch.manual_seed(0)
    vae, mdn = BetaVAE(cfg.vae_config()).eval(), LSTMMDN(cfg.mdn_config()).eval()
    clips = [scene(60, seed) for seed in range(5)]
    split = Split.blocks([60] * 5, [10.0] * 5, 0.4, 5.0)
    held = [c for c, _, _ in split.runs(held=True)]
    clips[held[0]][31:34] = clips[held[0]][30]  # frames 30-33: one picture, three frames after the first
    timing = Timing([np.arange(60) * DT] * 5, DT)
    cal = calibrate(vae, mdn, Footage(clips, [10.0] * 5, split, timing), cfg, torch.device("cpu"), "default")
    assert float(cal.comp_mean[0, 4]) == pytest.approx(0.3, abs=1e-4)
    assert float(cal.comp_std[0, 4]) == pytest.approx(DT)
    comp = torch.zeros(3, 1, 6)
    comp[:, 0, 4] = torch.tensor([0.2, 0.3, 0.8])
    assert standardise(comp, cal)[:, 0, 4].tolist() == pytest.approx([0.0, 0.0, 5.0], abs=1e-4)


@pytest.mark.parametrize("share", [0.002, 0.6])  # few pixels count (followed alone) or many (all followed)
def test_runs_add_each_frames_seconds_until_a_break(share):
    g = torch.Generator().manual_seed(3)
    counts = torch.rand(12, 2, 6, 7, generator=g) < share
    counts[:, 0, 1, 1] = True  # a pixel that counts throughout, from a run before
    counts[4:, 1, 2, 3] = True
    dt, before = torch.rand(12, generator=g), torch.zeros(2, 6, 7)
    before[0, 1, 1], before[1, 2, 3] = 5.0, 7.0  # the last counted before a break: it starts again at 0
    counts[3, 1, 2, 3] = False
    ref, run = torch.zeros(counts.shape), before.clone()
    for i in range(len(counts)):  # one frame at a time
        run = torch.where(counts[i], run + dt[i], torch.zeros(()))
        ref[i] = run
    torch.testing.assert_close(_runs(counts, dt, before), ref)
    assert ref[-1, 0, 1, 1] == pytest.approx(5.0 + dt.sum().item())
