"""Projects made by the previous release keep working: a version of six files (vae.pt, mdn.pt,
calibration.pt, ewc.pt, prior.pt, version.json) and a config of the first schema, as that release
wrote them (tests/data/legacy_project: trained, updated with a second scene and scored by it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Clips, invoke

from vidanom.config import read_config
from vidanom.detector import MODEL_FILE, Detector
from vidanom.project import Project
from vidanom.scoring import STILL_UNIT

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_project"
CPU = ("--device", "cpu")


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy"))


def test_the_legacy_layout_is_what_the_previous_release_wrote(legacy):
    assert json.loads((legacy / "vidanom.json").read_text())["schema_version"] == 1
    for version in ("v0001", "v0002"):
        files = {p.name for p in (legacy / "models" / version).iterdir()}
        assert files == {"vae.pt", "mdn.pt", "calibration.pt", "ewc.pt", "prior.pt", "version.json"}


def test_status_and_score_work_on_a_legacy_project(legacy, clips: Clips):
    res = invoke("status", "-p", legacy)
    assert res.exit_code == 0, res.output
    assert "v0001" in res.stdout and "v0002" in res.stdout and "night" in res.stdout
    res = invoke("score", clips.anomalous, *CPU, "-p", legacy)
    assert res.exit_code == 0, res.output
    summary = json.loads((legacy / "scores" / "anom.mp4.json").read_text())
    assert summary["model_version"] == "v0002" and summary["frames"] == clips.n_frames
    assert summary["segments"], "the legacy model still finds the anomaly"
    assert not (legacy / "models" / "v0002" / MODEL_FILE).exists()  # read as it is, not rewritten


def test_a_legacy_version_loads_with_its_own_weights_and_the_config_of_its_day(legacy):
    detector = Detector.load(legacy / "models" / "v0002")
    stored = torch.load(legacy / "models" / "v0002" / "vae.pt", weights_only=True)["model"]
    assert all(torch.equal(detector.vae.state_dict()[k], v) for k, v in stored.items())
    assert detector.prior is not None and detector.prior.scenes == ["default", "night"]
    assert detector.ewc is not None and detector.info["version"] == "v0002"
    assert detector.calibration.scenes == ["default", "night"]
    cfg = read_config(legacy / "vidanom.json")
    assert (cfg.frames.motion, cfg.frames.motion_gain) == ("difference", 1.0)  # what its models saw
    assert not detector.mdn.cfg.delta and not detector.mdn.cfg.residual


def test_a_legacy_version_is_updated_into_a_model_file(legacy, clips: Clips):
    res = invoke("update", clips.normal_b, "--scene", "street", "--steps", "4", *CPU, "-p", legacy)
    assert res.exit_code == 0, res.output
    new = legacy / "models" / "v0003"
    assert (new / MODEL_FILE).exists() and not (new / "vae.pt").exists()
    detector = Detector.load(Project.open(legacy))
    assert detector.version == "v0003" and detector.prior.scenes == ["default", "night", "street"]
    assert detector.info["parent"] == "v0002"


def test_a_legacy_version_is_recalibrated_under_this_release_s_rules(legacy, clips: Clips):
    before = Detector.load(legacy)
    res = invoke("train", clips.normal_b, "--stage", "calibrate", "--scene", "night", *CPU, "-p", legacy)
    assert res.exit_code == 0, res.output
    after = Detector.load(Project.open(legacy))
    assert after.version == "v0003" and after.info["stage"] == "calibrate"
    assert after.calibration.scenes == before.calibration.scenes
    assert all(torch.equal(before.vae.state_dict()[k], v) for k, v in after.vae.state_dict().items())
    night, default = after.calibration.scenes.index("night"), after.calibration.scenes.index("default")
    assert after.calibration.thresholds[night] != before.calibration.thresholds[night]  # set anew on the night clip
    assert after.calibration.thresholds[default] == before.calibration.thresholds[default]  # the other scene kept
    low = after.calibration.comp_low
    assert float(low[night, 3]) == pytest.approx(STILL_UNIT) and float(low[default, 3]) != pytest.approx(STILL_UNIT)
    assert invoke("score", clips.anomalous, *CPU, "-p", legacy).exit_code == 0
