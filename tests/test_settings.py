"""A model is what it was trained as: it scores with the input settings of its training (the `frames`
section and the architecture, from its model file) and with the project's `score` settings. When the
project's vidanom.json disagrees, `status` says so, `score` warns, `train` trains anew with the
project's settings, and the runs that keep the current models (update, train --stage calibrate) refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Clips, invoke

from vidanom.config import CONFIG_NAME
from vidanom.detector import Detector
from vidanom.project import Project
from vidanom.status import project_status
from vidanom.watch import watch

CPU = ("--device", "cpu")
CHANGED = {"motion": "speed", "motion_gain": 4.0, "motion_blur": 3, "stride": 2}  # everything shaping the input


def edit(root: Path, section: str, **values: object) -> None:
    data = json.loads((root / CONFIG_NAME).read_text())
    data[section].update(values)
    (root / CONFIG_NAME).write_text(json.dumps(data))


def test_frame_settings_changed_after_training_are_not_used_to_score(scored: Path, clips: Clips):
    before = (scored / "scores" / "anom.mp4.csv").read_bytes()
    segments = json.loads((scored / "scores" / "anom.mp4.json").read_text())["segments"]
    trained = Detector.load(scored / "models" / "v0001").config.frames
    edit(scored, "frames", **CHANGED)
    res = invoke("score", clips.anomalous, *CPU, "-p", scored)
    assert res.exit_code == 0, res.output
    assert (scored / "scores" / "anom.mp4.csv").read_bytes() == before  # scored as it was trained
    assert "frames.motion_gain is 4.0 in vidanom.json, 8.0 in model v0001" in res.stderr
    project = Project.open(scored)
    assert Detector.load(project).config.frames == trained
    events: list[dict] = []
    watch(project, str(clips.anomalous), on_event=events.append)
    keys = ("start_frame", "end_frame", "peak_frame")
    assert [tuple(e[k] for k in keys) for e in events] == [tuple(s[k] for k in keys) for s in segments]


def test_status_shows_what_the_project_s_file_and_the_model_disagree_on(trained_project: Path):
    edit(trained_project, "frames", motion_gain=4.0)
    edit(trained_project, "score", smooth=5)
    res = invoke("status", "-p", trained_project)
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "frames.motion_gain is 4.0 in vidanom.json, 8.0 in model v0001" in out
    assert "'vidanom train' trains anew with vidanom.json's" in out
    assert "score.smooth is 5 in vidanom.json, 3 in model v0001" in out
    assert "'vidanom train --stage calibrate'" in out


def test_train_resolves_a_disagreement_by_training_with_the_project_s_settings(trained_project: Path):
    edit(trained_project, "frames", motion_gain=4.0)
    before = project_status(Project.open(trained_project))
    assert before.trained_otherwise == ["frames.motion_gain is 4.0 in vidanom.json, 8.0 in model v0001"]
    res = invoke("train", "--steps", "4", *CPU, "-p", trained_project)
    assert res.exit_code == 0, res.output
    assert Detector.load(Project.open(trained_project)).config.frames.motion_gain == 4.0
    after = project_status(Project.open(trained_project))
    assert after.current == "v0002" and after.trained_otherwise == [] and after.calibrated_otherwise == []


@pytest.mark.parametrize("run", ["update", "calibrate"])
def test_runs_that_keep_the_current_models_refuse_other_input_settings(trained_project: Path, clips, run):
    edit(trained_project, "frames", motion_gain=4.0)
    args = ("update", clips.moving, "--scene", "b") if run == "update" else ("train", "--stage", "calibrate")
    res = invoke(*args, "--steps", "4", *CPU, "-p", trained_project)
    assert res.exit_code == 2, res.output
    assert "frames.motion_gain is 4.0 in vidanom.json, 8.0 in model v0001" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert Project.open(trained_project).current_version() == "v0001"
