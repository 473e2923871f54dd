"""Training: a budget of optimiser steps on any amount of footage, early stopping on held-out frames,
the PSNR and false-alarm rate that train reports, and its warnings."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import invoke, make_project, tiny_config

from vidanom import fitting
from vidanom.config import TrainConfig, with_overrides
from vidanom.data import Split
from vidanom.fitting import Fitting, fit_vae, learning_rate, vae_holdout
from vidanom.vae import BetaVAE

CPU = ("--device", "cpu")


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)


def test_a_short_clip_gets_the_whole_step_budget(monkeypatch):
    # 20 frames at 16 a batch were one step an epoch; a budget of steps runs them all, whatever the footage
    cfg = with_overrides(tiny_config(), train={"vae_steps": 30, "eval_every": 10, "patience": 100})
    drawn = []
    real = fitting.sample_batch
    monkeypatch.setattr(fitting, "sample_batch", lambda *a, **k: drawn.append(1) or real(*a, **k))
    torch.manual_seed(0)
    vae = BetaVAE(cfg.vae_config())
    clip = frames(20)
    split = Split.blocks([20], [25.0], 0.2, 5.0)
    stats = fit_vae(vae, [clip], split, cfg, torch.device("cpu"))
    assert stats["steps"] == 30 and len(drawn) == 30
    assert split.index(held=True).size and not set(map(tuple, split.index(held=True))) & set(
        map(tuple, split.train_index())
    )


def test_inputs_made_once_train_the_same_model_as_inputs_made_at_every_step(monkeypatch):
    cfg = with_overrides(tiny_config(), train={"vae_steps": 12, "eval_every": 4, "patience": 100})
    clips, split = [frames(20), frames(9, seed=1)], Split.blocks([20, 9], [25.0, 25.0], 0.2, 5.0)
    models = []
    for most in (fitting.PREMADE_BYTES, 0):  # 0: nothing fits, every batch is made from the frames
        monkeypatch.setattr(fitting, "PREMADE_BYTES", most)
        torch.manual_seed(0)
        models.append(BetaVAE(cfg.vae_config()))
        fit_vae(models[-1], clips, split, cfg, torch.device("cpu"))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("frames,steps", [(640, 3000), (6400, 10000), (64000, 12000)])
def test_long_footage_gets_passes_over_its_frames_within_the_bounds(frames, steps):
    # 100 passes of 64-frame batches: 1000 steps for 640 frames (raised to the least, 3000), 10000 for
    # 6400, and 100000 for 64000 (cut to the most, 12000)
    tc = TrainConfig(vae_steps=3000, vae_epochs=100.0, vae_max_steps=12000, batch_size=64)
    assert fitting.vae_budget(tc, frames) == steps
    assert fitting.vae_budget(replace(tc, vae_epochs=0.0), frames) == 3000  # fixed_steps' budget


@pytest.mark.parametrize("frames,share,steps", [(960, 0.5, 900), (960, 0.0, 500), (64000, 0.5, 12000)])
def test_an_update_gets_passes_over_its_new_frames_at_their_part_of_the_batch(frames, share, steps):
    # 30 passes: 960 frames at 32 a batch (half of it replayed) is 900 steps; at 64 a batch 450, raised
    # to the least (500); 64000 frames 60000, cut to the most (12000)
    tc = TrainConfig(vae_steps=3000, update_epochs=30.0, vae_max_steps=12000, batch_size=64)
    assert fitting.update_budget(tc, frames, share) == steps
    assert fitting.update_budget(replace(tc, update_epochs=0.0), frames, share) == 3000  # fixed_steps' budget


def test_training_stops_early_and_keeps_the_best_weights(monkeypatch):
    cfg = with_overrides(tiny_config(), train={"vae_steps": 200, "eval_every": 2, "patience": 3})
    losses = iter([5.0, 4.0, 4.5, 4.2, 3.0, 6.0, 6.0, 6.0])  # held-out losses, evaluation by evaluation
    kept = {}

    def holdout(vae, x, channels):
        loss = next(losses, 9.0)
        if loss == 3.0:
            kept.update({k: v.clone() for k, v in vae.state_dict().items()})
        return {"loss": loss, "psnr": 20.0}

    monkeypatch.setattr(fitting, "vae_holdout", holdout)
    torch.manual_seed(0)
    vae = BetaVAE(cfg.vae_config())
    stats = fit_vae(vae, [frames(40)], Split.blocks([40], [25.0], 0.2, 5.0), cfg, torch.device("cpu"))
    # 3.0 at the 5th evaluation (step 10) after two worse ones, then three without improvement: stopped at 16
    assert stats["steps"] == 16
    assert all(torch.equal(v, kept[k]) for k, v in vae.state_dict().items())


def test_fitting_counts_an_evaluation_as_progress_only_when_it_improves():
    state, model = Fitting(), torch.nn.Linear(2, 1)
    state.improve(model, {"loss": 10.0})
    assert (state.best, state.bad) == (10.0, 0) and state.best_state is not None
    state.improve(model, {"loss": 9.995})  # better by less than MIN_GAIN of it: no progress
    assert (state.best, state.bad) == (10.0, 1)
    state.improve(model, {"loss": 9.0})
    assert (state.best, state.bad) == (9.0, 0)


def test_learning_rate_decays_from_lr_to_a_tenth_along_a_cosine():
    tc = tiny_config().train
    assert learning_rate(tc, 0, 100) == pytest.approx(tc.lr)
    assert learning_rate(tc, 50, 100) == pytest.approx(tc.lr * 0.55)
    assert learning_rate(tc, 100, 100) == pytest.approx(tc.lr * 0.1)


def test_vae_holdout_psnr_against_a_hand_computation():
    torch.manual_seed(0)
    vae = BetaVAE(tiny_config().vae_config()).eval()
    x = torch.rand(5, 2, 32, 32)
    got = vae_holdout(vae, x, 1)
    with torch.no_grad():
        recon = vae(x, sample=False)[0]
    mse = (recon[:, :1].clamp(0, 1) - x[:, :1]).pow(2).mean().item()
    assert got["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)


def test_train_reports_psnr_and_false_alarms_and_warns_about_short_footage(project, clips):
    res = invoke("train", clips.folder, "--steps", "8", *CPU, "-p", project)
    assert res.exit_code == 0, res.output
    assert "dB PSNR" in res.stdout and "expected to flag" in res.stdout
    assert "warning: only 8 s of normal footage" in res.stderr  # 2 clips of 96 frames at 25 fps
    info = json.loads((project / "models" / "v0001" / "version.json").read_text())
    assert 0 < info["psnr"] < 60 and 0 <= info["expected_false_alarms"] <= 1
    assert info["vae"]["steps"] == 8 and info["held_out_frames"] > 0
    assert any("only 8 s" in w for w in info["warnings"])
    status = invoke("status", "-p", project)
    assert f"{info['psnr']:.1f}" in status.stdout and f"({100 * info['expected_false_alarms']:.1f}%)" in status.stdout


def test_a_long_enough_recording_trains_without_the_short_footage_warning(tmp_path, clips, monkeypatch):
    from vidanom import calibration

    root = make_project(tmp_path / "p")
    monkeypatch.setattr(calibration, "MIN_SECONDS", 5.0)  # 8 s of footage is then enough
    res = invoke("train", clips.folder, "--steps", "8", *CPU, "-p", root)
    assert res.exit_code == 0, res.output
    info = json.loads((root / "models" / "v0001" / "version.json").read_text())
    seconds, held, rate = info["seconds_of_footage"], info["held_out_frames"], info["expected_false_alarms"]
    # what train warned of is what the library's rules give for this footage, and those rules do warn
    # of this footage's length where a minute is the least
    expected = calibration.trust_warnings(seconds, held, rate, 0.01)
    assert info["warnings"] == expected
    assert [line for line in res.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: {w}" for w in expected
    ]
    monkeypatch.setattr(calibration, "MIN_SECONDS", 60.0)
    assert calibration.trust_warnings(seconds, held, rate, 0.01) == [
        f"only {seconds:.0f} s of normal footage: "
        "too little to promise a false-alarm rate; "
        "train on a few minutes or more",
        *expected,
    ]
