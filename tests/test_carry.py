"""Old scenes' calibrations after an update: carried through the models' drift on their dreamed clips
(vidanom.carry), or measured anew on the frames kept of them (vidanom.kept); and what status says of them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, square_frames, write_video

from vidanom import carry, kept
from vidanom.calibration import Footage
from vidanom.data import Split
from vidanom.detector import Detector
from vidanom.project import Project
from vidanom.status import project_status

TRAIN = ("--steps", "8", "--device", "cpu")


@pytest.fixture(scope="module")
def scene_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second scene: an inverted background with a square moving the other way."""
    root = tmp_path_factory.mktemp("carry_b")
    frames, _ = square_frames(96, 40, 10, -1.0, 8)
    write_video(root / "b1.mp4", np.ascontiguousarray(255 - frames))
    return root


def two_scenes(detector: Detector) -> tuple:
    """The detector's calibration with a second scene "new" (a copy of its first)."""
    cal = detector.calibration
    return cal, carry.stacked([carry.rows(cal, cal.scenes), {**carry.rows(cal, cal.scenes), "scenes": ["new"]}])


def test_models_that_did_not_change_keep_every_scene_as_it_was(trained_project):
    detector = Detector.load(Project.open(trained_project))
    cal, two = two_scenes(detector)
    fresh = carry.stacked([carry.rows(cal, cal.scenes)])
    out, drifts = carry.after_update(None, detector.vae, two, fresh, ["new", "default"], detector.config)
    assert out.scenes == ["new", "default"] and drifts == []
    for key in ("err_mean", "kl_std", "nll_mean", "comp_std", "still_floor", "thresholds", "frame_mean"):
        torch.testing.assert_close(getattr(out, key), getattr(two, key).flip(0))


def test_an_old_scene_follows_what_changed_and_nothing_else(trained_project):
    """A decoder whose motion output is off by 0.05: the old scene's error means move by what its
    replayed frames say; its KL (the encoder unchanged), spreads, surprise, stillness and threshold
    stay as measured; the fresh scene is as measured."""
    detector = Detector.load(Project.open(trained_project))
    cal, two = two_scenes(detector)
    worse = copy.deepcopy(detector.vae)
    with torch.no_grad():
        worse.decoder[-1].bias[1:] += 0.05
    old = carry.Models(detector.vae, detector.prior)
    fresh = carry.stacked([{**carry.rows(cal, cal.scenes), "scenes": ["new"]}])
    out, (drift,) = carry.after_update(old, worse, two, fresh, ["default", "new"], detector.config)
    assert drift.scene == "default" and drift.moved["recon"] > 0 and drift.moved["kl"] == 0
    inputs = carry.replayed(old, "default", detector.config, detector.config.train.seed)
    assert inputs.shape[0] == carry.DRIFT_SAMPLES
    (before, _), (after, _) = (carry.sample_maps(v, inputs, detector.config) for v in (detector.vae, worse))
    shift = (after.double().mean(0) - before.double().mean(0)).float()
    assert (shift.abs() > 1e-4).all()
    torch.testing.assert_close(out.err_mean[0], cal.err_mean[0] + shift, rtol=1e-4, atol=1e-6)
    for key in ("err_std", "kl_mean", "kl_std", "nll_mean", "nll_std", "still_floor", "comp_std", "thresholds"):
        torch.testing.assert_close(getattr(out, key)[0], getattr(cal, key)[0])
    for key in ("err_mean", "kl_mean", "comp_std", "thresholds"):
        torch.testing.assert_close(getattr(out, key)[1], getattr(cal, key)[0])  # the fresh scene, as measured


def test_after_an_update_old_scenes_are_scored_with_all_six_components(trained_project, scene_b):
    res = invoke("update", scene_b, "--scene", "moved", *TRAIN, "-p", trained_project)
    assert res.exit_code == 0, res.output
    cal = Detector.load(trained_project / "models" / "v0002").calibration
    assert cal.scenes == ["default", "moved"]
    assert torch.isfinite(cal.comp_std).all() and torch.isfinite(cal.comp_low).all()  # none standardised away
    info = json.loads((trained_project / "models" / "v0002" / "version.json").read_text())
    carried, learned = info["calibration"]["default"], info["calibration"]["moved"]
    assert carried["on"] == "carried" and carried["updates"] == 1 and carried["since"] == "v0001"
    assert set(carried["drift"]) == {"recon", "kl"}
    assert learned["on"] == "footage" and learned["updates"] == 0 and learned["held_out"] > 0
    rows = {r.name: r for r in project_status(Project.open(trained_project)).scenes}
    old, new = rows["default"], rows["moved"]
    assert old.components == new.components == ["recon", "kl", "nll", "still", "frozen", "direction"]
    assert (old.on, old.measured_on, old.updates, old.since) == ("carried", "footage", 1, "v0001")
    assert old.frames == carried["frames"] > 0 and set(old.drift) == {"recon", "kl"}
    assert (new.on, new.updates, new.held_out) == ("footage", 0, learned["held_out"])
    assert old.sure is not None and 0 < old.sure <= 0.9  # 38 held-out frames: far from 90% sure of 1%
    status = invoke("status", "-p", trained_project)
    assert status.exit_code == 0 and "scenes of v0002" in status.output, status.output


def test_calibrating_one_scene_anew_keeps_the_others_whole(trained_project, scene_b):
    """`train --stage calibrate --scene moved` changes no model: the other scene keeps every statistic
    (it kept only its reconstruction's before)."""
    assert invoke("update", scene_b, "--scene", "moved", *TRAIN, "-p", trained_project).exit_code == 0
    res = invoke("train", "--stage", "calibrate", "--scene", "moved", "--device", "cpu", "-p", trained_project)
    assert res.exit_code == 0, res.output
    two, three = (Detector.load(trained_project / "models" / v).calibration for v in ("v0002", "v0003"))
    for key in ("err_mean", "kl_mean", "nll_std", "comp_std", "comp_low", "still_floor", "thresholds"):
        torch.testing.assert_close(getattr(three, key)[0], getattr(two, key)[0])


def test_an_lstm_mdn_fitted_anew_on_one_scene_leaves_the_others_scored_without_its_surprise(trained_project, scene_b):
    """`train --stage mdn --scene moved` fits a new LSTM-MDN on "moved" alone: the old scene's surprise
    and stillness statistics belonged to the one it replaced, so they no longer count; the rest stays."""
    assert invoke("update", scene_b, "--scene", "moved", *TRAIN, "-p", trained_project).exit_code == 0
    res = invoke("train", "--stage", "mdn", "--scene", "moved", *TRAIN, "-p", trained_project)
    assert res.exit_code == 0, res.output
    two, three = (Detector.load(trained_project / "models" / v).calibration for v in ("v0002", "v0003"))
    assert three.comp_std[0, 2].isinf() and three.comp_low[0, 3].isinf()
    for key in ("err_mean", "kl_mean", "thresholds"):
        torch.testing.assert_close(getattr(three, key)[0], getattr(two, key)[0])
    torch.testing.assert_close(three.comp_std[0, :2], two.comp_std[0, :2])
    rows = {r.name: r for r in project_status(Project.open(trained_project)).scenes}
    assert rows["default"].components == ["recon", "kl", "frozen", "direction"]  # pixels are no model's
    assert rows["moved"].components == ["recon", "kl", "nll", "still", "frozen", "direction"]


def test_kept_frames_calibrate_an_old_scene_anew_and_go_with_the_setting(trained_project, scene_b, tmp_path):
    res = invoke("train", "--keep-frames", "100", *TRAIN, "-p", trained_project)
    assert res.exit_code == 0, res.output
    stored = kept.load(trained_project / "models" / "v0002")
    assert list(stored) == ["default"] and 100 <= len(stored["default"].frames) <= 200
    res = invoke("update", scene_b, "--scene", "moved", "--keep-frames", "100", *TRAIN, "-p", trained_project)
    assert res.exit_code == 0, res.output
    info = json.loads((trained_project / "models" / "v0003" / "version.json").read_text())
    assert info["calibration"]["default"]["on"] == "kept frames"
    assert set(kept.load(trained_project / "models" / "v0003")) == {"default", "moved"}
    # calibrated on the kept frames with the new models: as calibrate() makes it of them
    from vidanom.calibration import calibrate

    three = Detector.load(trained_project / "models" / "v0003")
    direct = calibrate(three.vae, three.mdn, stored["default"].footage(), three.config, torch.device("cpu"), "default")
    torch.testing.assert_close(three.calibration.kl_mean[0], direct.kl_mean[0])
    torch.testing.assert_close(three.calibration.thresholds[0], direct.thresholds[0])
    # without the setting, the next version keeps no footage and carries both
    write_video(tmp_path / "c1.mp4", square_frames(96, 3, 3, 2.0, 6)[0])
    res = invoke("update", tmp_path / "c1.mp4", "--scene", "other", *TRAIN, "-p", trained_project)
    assert res.exit_code == 0, res.output
    assert not (trained_project / "models" / "v0004" / kept.KEPT_FILE).exists()
    info = json.loads((trained_project / "models" / "v0004" / "version.json").read_text())
    assert [info["calibration"][s]["on"] for s in ("default", "moved")] == ["kept frames", "kept frames"]


def test_kept_runs_are_spread_over_the_footage_with_held_out_ones():
    clips = [np.zeros((500, 8, 8, 1), np.uint8) for _ in range(3)]
    for c, clip in enumerate(clips):  # each frame says where it comes from
        clip[:, 0, 0, 0], clip[:, 0, 1, 0], clip[:, 0, 2, 0] = c, np.arange(500) % 256, np.arange(500) // 256
    split = Split.blocks([500] * 3, [10.0] * 3, 0.2, 5.0)
    footage = Footage(clips, [10.0] * 3, split)
    k = kept.keep(footage, 640)
    assert k is not None and len(k.runs) == 10 and 600 <= len(k.frames) <= 640
    for a, b, held in k.runs:
        assert 0 < b - a <= kept.RUN
        c, first = int(k.frames[a, 0, 0, 0]), int(k.frames[a, 0, 1, 0]) + 256 * int(k.frames[a, 0, 2, 0])
        assert footage.split.mask(c)[first : first + b - a].all() == bool(held)  # held out where it was
        assert footage.split.mask(c)[first : first + b - a].any() == bool(held)
    assert sum(h for _, _, h in k.runs) == 2  # the footage's share, and at least two (for the threshold)
    assert {int(k.frames[a, 0, 0, 0]) for a, _, _ in k.runs} == {0, 1, 2}  # from every clip
    as_footage = k.footage()
    assert as_footage.training_seconds == footage.training_seconds  # it stands for the whole footage
    assert len(as_footage.split.index(True)) == sum(b - a for a, b, h in k.runs if h) == k.counts()[1]
    assert kept.keep(footage, 0) is None
