"""Every command through the Typer CLI, in temporary project folders, on tiny synthetic clips."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import ANOMALY, invoke, make_project, tiny_config
from sklearn.metrics import roc_auc_score

from vidanom.cli import RESUMABLE, app
from vidanom.config import CONFIG_NAME, ProjectConfig, SCHEMA_VERSION, read_config, to_dict
from vidanom.project import Project
from vidanom.detector import Detector
from vidanom.scoring import CausalMean, combine

COLUMNS = ["frame", "time", "recon", "kl", "nll", "still", "frozen", "direction", "scene", "score", "anomalous"]
TRAIN = ("--steps", "8", "--device", "cpu")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def scores_of(project: Path, clip: str = "anom.mp4") -> np.ndarray:
    return np.array([float(r["score"]) for r in read_csv(project / "scores" / f"{clip}.csv")])


def assert_clean_error(res, exit_code: int = 2, match: str = "") -> str:
    """A user error: non-zero exit, one line on stderr starting 'error:', no traceback."""
    assert res.exit_code == exit_code, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # not an escaped library exception
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert match in lines[0]
    return lines[0]


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"anom.mp4": [list(ANOMALY)]}))
    return path


# -- init, extract -------------------------------------------------------------------------------------


def test_init_creates_a_project_with_the_default_config(tmp_path):
    res = invoke("init", tmp_path / "cam1")
    assert res.exit_code == 0, res.output
    root = tmp_path / "cam1"
    assert read_config(root / CONFIG_NAME) == ProjectConfig()
    assert all((root / sub).is_dir() for sub in ("cache", "models", "scores"))
    assert_clean_error(invoke("init", root), match="already a vidanom project")


def test_extract_caches_each_clip_once(project, clips):
    res = invoke("extract", clips.folder, "--scene", "street", "-p", project)
    assert res.exit_code == 0, res.output
    assert res.stdout.count("extracted") == 2 and "normal_a.mp4" in res.stdout and "normal_b.mp4" in res.stdout
    metas = [json.loads(p.read_text()) for p in (project / "cache").glob("*.json")]
    assert sorted(m["name"] for m in metas) == ["normal_a.mp4", "normal_b.mp4"]
    assert {m["scene"] for m in metas} == {"street"} and {m["frames"] for m in metas} == {clips.normal_frames}
    assert {(m["height"], m["width"], m["channels"]) for m in metas} == {(32, 32, 1)}  # the project's config
    again = invoke("extract", clips.normal_a, clips.frames_dir, "--scene", "street", "-p", project)
    assert again.exit_code == 0, again.output
    assert "normal_a.mp4" in again.stdout and "already cached" in again.stdout
    assert f"pngs: {clips.n_png} frames" in again.stdout and again.stdout.count("extracted") == 1
    assert not (project / "lock").exists()


# -- train, status, score --------------------------------------------------------------------------


def test_status_lists_the_trained_version(trained_project):
    res = invoke("status", "-p", trained_project)
    assert res.exit_code == 0, res.output
    assert "v0001" in res.stdout and "cached clips: 2" in res.stdout
    (info,) = Project.open(trained_project).versions()
    assert info["version"] == "v0001" and info["has_mdn"] and info["stage"] == "all"
    assert info["clips"] == ["normal_a.mp4", "normal_b.mp4"]
    assert (trained_project / "models" / "current").read_text().strip() == "v0001"
    assert not (trained_project / "models" / ".partial").exists()


def test_score_writes_csv_json_and_png(scored, clips):
    rows = read_csv(scored / "scores" / "anom.mp4.csv")
    summary = json.loads((scored / "scores" / "anom.mp4.json").read_text())
    assert len(rows) == clips.n_frames == summary["frames"]
    assert [int(r["frame"]) for r in rows] == list(range(clips.n_frames))
    np.testing.assert_allclose([float(r["time"]) for r in rows], np.arange(clips.n_frames) / 25.0, atol=1e-3)
    assert summary["model_version"] == "v0001" and summary["clip"] == "anom.mp4"
    # the anomalous flag is the score against the stored threshold, and segments are runs of flagged frames
    score = np.array([float(r["score"]) for r in rows])
    flags = np.array([int(r["anomalous"]) for r in rows])
    np.testing.assert_array_equal(flags, score > summary["threshold"])
    assert summary["anomalous_frames"] == flags.sum() and summary["peak_score"] == pytest.approx(score.max(), 1e-4)
    min_len = tiny_config().score.min_segment
    for seg in summary["segments"]:
        a, b = seg["start_frame"], seg["end_frame"]
        assert b - a >= min_len and flags[a:b].all() and (a == 0 or not flags[a - 1])
        assert (b == len(flags) or not flags[b]) and a <= seg["peak_frame"] < b
    covered = sum(s["end_frame"] - s["start_frame"] for s in summary["segments"])
    assert covered <= flags.sum()
    # nll and still are empty during the LSTM's warm-up and present after it
    for k in ("nll", "still"):
        assert all(r[k] == "" for r in rows[:8]) and all(r[k] != "" for r in rows[8:])
    for k in ("frozen", "direction"):  # no model, no warm-up; a clip's first frame neither stopped nor moved
        assert all(r[k] != "" for r in rows) and float(rows[0][k]) == 0.0
    assert (scored / "scores" / "anom.mp4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_anomaly_is_detected(scored_template):
    # end to end on the synthetic clip: a large, fast square is far outside what the normal clips show
    summary = json.loads((scored_template / "scores" / "anom.mp4.json").read_text())
    y = np.zeros(summary["frames"], dtype=int)
    y[ANOMALY[0] : ANOMALY[1]] = 1
    assert roc_auc_score(y, scores_of(scored_template)) > 0.9
    assert summary["segments"], "no anomalous segment reported"
    for seg in summary["segments"]:  # scoring is causal: no segment starts before the anomaly does
        assert ANOMALY[0] <= seg["start_frame"] < ANOMALY[1]
        assert ANOMALY[0] <= seg["peak_frame"] < ANOMALY[1] + tiny_config().score.smooth


def test_stored_scores_follow_from_the_stored_components(scored):
    # score = Σ w · standardised causal mean of each component but frozen (a run's length, as it is), with
    # the version's calibration
    rows = read_csv(scored / "scores" / "anom.mp4.csv")
    comp = torch.tensor([[float(r[k]) if r[k] else float("nan") for k in COLUMNS[2:8]] for r in rows])
    cal = Detector.load(scored / "models" / "v0001").calibration
    assert cal.scenes == ["default"] and {r["scene"] for r in rows} == {"default"}
    cfg = tiny_config().score
    smoothed = CausalMean(cfg.smooth)(comp[:, None])
    smoothed[:, 0, 4] = comp[:, 4]
    expected = combine(smoothed, cal, cfg.weights)[:, 0].numpy()
    np.testing.assert_allclose(scores_of(scored), expected, rtol=1e-3, atol=1e-3)


def test_score_a_folder_of_frames(trained_project, clips):
    res = invoke("score", clips.frames_dir, "--device", "cpu", "-p", trained_project)
    assert res.exit_code == 0, res.output
    summary = json.loads((trained_project / "scores" / "pngs.json").read_text())
    assert summary["frames"] == clips.n_png == len(read_csv(trained_project / "scores" / "pngs.csv"))
    assert summary["fps"] == 25.0  # frame folders do not say: the default rate
    assert "pngs" in invoke("status", "-p", trained_project).stdout


def test_plot_with_labels_writes_a_png(scored, labels, tmp_path):
    out = tmp_path / "timeline.png"
    res = invoke("plot", "anom.mp4", "--labels", labels, "-o", out, "-p", scored)
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(out) in res.stdout.replace("\n", "")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"else.mp4": [[0, 3]]}))
    assert_clean_error(invoke("plot", "anom.mp4", "--labels", other, "-p", scored), match="no entry for 'anom.mp4'")
    assert_clean_error(invoke("plot", "never.mp4", "-p", scored), match="no stored scores")


def test_eval_json_matches_sklearn_on_the_stored_scores(scored, labels, tmp_path, clips):
    res = invoke("eval", labels, "--json", "-p", scored)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    y = np.zeros(clips.n_frames, dtype=int)
    y[ANOMALY[0] : ANOMALY[1]] = 1
    expected = roc_auc_score(y, scores_of(scored))
    assert out["auroc"] == pytest.approx(expected, abs=1e-12)
    assert out["per_clip_auroc"]["anom.mp4"] == pytest.approx(expected, abs=1e-12)
    assert (out["frames"], out["anomalous_frames"], out["clips"], out["missing"]) == (
        clips.n_frames,
        ANOMALY[1] - ANOMALY[0],
        1,
        [],
    )
    # labels of a clip that was never scored are reported as missing, not counted
    more = tmp_path / "more.json"
    more.write_text(json.dumps({"anom.mp4": [list(ANOMALY)], "other.mp4": [[0, 5]]}))
    out2 = json.loads(invoke("eval", more, "--json", "-p", scored).stdout)
    assert out2["missing"] == ["other.mp4"] and out2["auroc"] == out["auroc"]
    table = invoke("eval", labels, "-p", scored)
    assert table.exit_code == 0 and "auroc" in table.stdout and f"{expected:.4f}" in table.stdout


def test_eval_with_bad_labels_is_a_clean_error(scored, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert_clean_error(invoke("eval", bad, "-p", scored), match="cannot read labels")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"anom.mp4": [[500, 510]]}))
    assert_clean_error(invoke("eval", outside, "-p", scored), match="outside")
    unscored = tmp_path / "unscored.json"
    unscored.write_text(json.dumps({"x.mp4": [[0, 1]]}))
    assert_clean_error(invoke("eval", unscored, "-p", scored), match="has been scored")


# -- finding the project ---------------------------------------------------------------------------


def test_project_found_by_option_env_var_and_cwd(trained_project, tmp_path, monkeypatch):
    where = str(trained_project.resolve())
    by_option = invoke("status", "--project", trained_project)
    assert by_option.exit_code == 0 and where in by_option.stdout.replace("\n", "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert_clean_error(invoke("status"), match="not a vidanom project")
    monkeypatch.setenv("VIDANOM_PROJECT", str(trained_project))
    by_env = invoke("status")
    assert by_env.exit_code == 0 and where in by_env.stdout.replace("\n", "")
    monkeypatch.setenv("VIDANOM_PROJECT", str(elsewhere))
    assert invoke("status", "-p", trained_project).exit_code == 0  # the option wins over the variable
    monkeypatch.delenv("VIDANOM_PROJECT")
    monkeypatch.chdir(trained_project)
    by_cwd = invoke("status")
    assert by_cwd.exit_code == 0 and where in by_cwd.stdout.replace("\n", "") and "v0001" in by_cwd.stdout


# -- user errors -----------------------------------------------------------------------------------


def test_stage_calibrate_sets_a_new_threshold_on_the_same_models(trained_project, clips):
    def calibrate_at(false_alarms: float) -> Detector:
        cfg = json.loads((trained_project / CONFIG_NAME).read_text())
        cfg["score"]["false_alarms"] = false_alarms
        (trained_project / CONFIG_NAME).write_text(json.dumps(cfg))
        res = invoke("train", "--stage", "calibrate", "--device", "cpu", "-p", trained_project)
        assert res.exit_code == 0, res.output
        return Detector.load(trained_project)

    first = Detector.load(trained_project)
    looser = calibrate_at(0.3)
    assert looser.version == "v0002" and looser.info["stage"] == "calibrate" and looser.info["parent"] == "v0001"
    for a, b in ((first.vae, looser.vae), (first.mdn, looser.mdn)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(looser.calibration.err_mean, first.calibration.err_mean)  # the same models, the same clips
    assert looser.threshold < first.threshold  # a 30% target lets more held-out frames lie above it
    again = calibrate_at(tiny_config().score.false_alarms)
    # the same threshold again, to float rounding: training calibrates with the models it holds in memory,
    # a later calibration with the models it loads (their KL means already differ by about 1e-9)
    assert again.threshold == pytest.approx(first.threshold, rel=1e-6) and again.info["parent"] == "v0002"

    cached = sorted((trained_project / "cache").iterdir())
    res = invoke("train", clips.anomalous, "--stage", "calibrate", "--scene", "night", "-p", trained_project)
    assert_clean_error(res, match="has not learned scene 'night'")
    assert sorted((trained_project / "cache").iterdir()) == cached  # refused before extracting anything


def test_missing_video_is_a_clean_error(trained_project, tmp_path):
    assert_clean_error(invoke("score", tmp_path / "missing.mp4", "-p", trained_project), match="no such file")
    assert_clean_error(invoke("extract", tmp_path / "missing.mp4", "-p", trained_project), match="no such file")
    assert not (trained_project / "lock").exists()  # the lock is released on errors too


def test_not_a_project_is_a_clean_error(tmp_path, clips):
    assert_clean_error(invoke("status", "-p", tmp_path), match="not a vidanom project")
    assert_clean_error(invoke("train", clips.folder, "-p", tmp_path), match="not a vidanom project")


def test_score_before_train_is_a_clean_error(project, clips):
    assert_clean_error(invoke("score", clips.anomalous, "-p", project), match="no trained model")
    assert_clean_error(invoke("train", "--stage", "mdn", *TRAIN, "-p", project), match="vidanom train")


def test_fake_video_is_a_clean_error(project, tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    assert_clean_error(invoke("extract", fake, "-p", project), match="fake.mp4")


def test_config_from_a_newer_vidanom_is_a_clean_error(project):
    data = to_dict(tiny_config())
    data["schema_version"] = SCHEMA_VERSION + 1
    (project / CONFIG_NAME).write_text(json.dumps(data))
    assert_clean_error(invoke("status", "-p", project), match="newer vidanom")


def test_hand_edited_config_with_a_wrong_type_is_a_clean_error(project):
    data = to_dict(tiny_config())
    data["frames"]["width"] = "wide"
    (project / CONFIG_NAME).write_text(json.dumps(data))
    assert_clean_error(invoke("status", "-p", project), match="frames.width must be a whole number")


def test_a_frame_size_changed_after_training_scores_as_trained_and_other_patches_are_refused(trained_project, clips):
    data = to_dict(tiny_config(frames={"width": 64}))
    (trained_project / CONFIG_NAME).write_text(json.dumps(data))
    res = invoke("score", clips.anomalous, "-p", trained_project)
    assert res.exit_code == 0 and "frames.width is 64 in vidanom.json, 32 in model v0001" in res.stderr
    assert len(read_csv(trained_project / "scores" / "anom.mp4.csv")) == 48  # at the model's 32×32
    data = to_dict(tiny_config(score={"patch": 4}))  # the calibration's patch statistics no longer fit
    (trained_project / CONFIG_NAME).write_text(json.dumps(data))
    assert_clean_error(invoke("score", clips.anomalous, "-p", trained_project), match="score.patch")


def test_bad_stage_is_refused(project):
    res = invoke("train", "--stage", "everything", "-p", project)
    assert res.exit_code != 0 and "--stage" in res.output and "Traceback" not in res.output


def test_busy_project_refuses_a_second_training_and_a_dead_holders_lock_is_taken_over(project, clips):
    lock = project / "lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "command": "train", "started": 0}))
    for cmd in (("train", clips.normal_a, *TRAIN), ("update", clips.normal_a, *TRAIN)):
        started = time.monotonic()
        line = assert_clean_error(invoke(*cmd, "--wait", "0.5", "-p", project), exit_code=3, match="project is busy")
        assert 0.5 <= time.monotonic() - started < 5.0  # it waited as long as it was told, not the default
        assert f"'vidanom train' (pid {os.getpid()})" in line
    assert lock.exists()  # someone else's lock is left alone
    res = invoke("extract", clips.normal_a, "-p", project)  # extracting takes no lock: it goes on meanwhile
    assert res.exit_code == 0 and lock.exists(), res.output
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "command": "train", "started": 0}))
    res = invoke("train", clips.normal_a, *TRAIN, "-p", project)
    assert res.exit_code == 0, res.output
    assert not lock.exists()


def test_errors_from_the_real_console_script_have_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDANOM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "vidanom", "status", "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and "not a vidanom project" in proc.stderr


# -- training: reproducibility and stages ----------------------------------------------------------


def test_training_twice_with_the_same_seed_gives_identical_scores(tmp_path, clips, scored_template):
    def train_and_score(name: str, seed: str) -> np.ndarray:
        root = make_project(tmp_path / name)
        res = invoke("train", clips.folder, *TRAIN, "--seed", seed, "-p", root)
        assert res.exit_code == 0, res.output
        assert invoke("score", clips.anomalous, "--device", "cpu", "-p", root).exit_code == 0
        return root

    again = train_and_score("again", "0")  # the session's template was trained with seed 0 too
    assert (again / "scores" / "anom.mp4.csv").read_text() == (scored_template / "scores" / "anom.mp4.csv").read_text()
    other = train_and_score("other", "1")
    assert not np.array_equal(scores_of(other), scores_of(scored_template))


def test_stage_vae_then_stage_mdn(project, clips):
    res = invoke("train", clips.folder, "--stage", "vae", *TRAIN, "--seed", "0", "-p", project)
    assert res.exit_code == 0, res.output
    v1 = project / "models" / "v0001"
    assert Detector.load(v1).mdn is None
    assert json.loads((v1 / "version.json").read_text())["has_mdn"] is False
    assert invoke("score", clips.anomalous, "--device", "cpu", "-p", project).exit_code == 0
    rows = read_csv(project / "scores" / "anom.mp4.csv")
    assert all(r["nll"] == "" for r in rows) and all(r["score"] != "" for r in rows)

    res = invoke("train", "--stage", "mdn", *TRAIN, "--seed", "0", "-p", project)  # on the cached clips
    assert res.exit_code == 0, res.output
    v2 = project / "models" / "v0002"
    info = json.loads((v2 / "version.json").read_text())
    first, second = Detector.load(v1), Detector.load(v2)
    assert second.mdn is not None and info["has_mdn"] and info["stage"] == "mdn" and info["parent"] == "v0001"
    assert (project / "models" / "current").read_text().strip() == "v0002"
    vae1, vae2 = first.vae.state_dict(), second.vae.state_dict()
    assert vae1.keys() == vae2.keys() and all(torch.equal(vae1[k], vae2[k]) for k in vae1)  # VAE kept as it was
    prior1, prior2 = first.prior, second.prior  # and what an update needs
    assert prior2.scenes == prior1.scenes and torch.equal(prior2.chol, prior1.chol)
    ewc1, ewc2 = first.ewc["fisher"], second.ewc["fisher"]
    assert ewc1.keys() == ewc2.keys() and all(torch.equal(ewc1[k], ewc2[k]) for k in ewc1)
    assert invoke("score", clips.anomalous, "--device", "cpu", "-p", project).exit_code == 0
    rows = read_csv(project / "scores" / "anom.mp4.csv")
    assert all(r["nll"] != "" for r in rows[8:])
    assert json.loads((project / "scores" / "anom.mp4.json").read_text())["model_version"] == "v0002"
    status = invoke("status", "-p", project)
    assert "v0001" in status.stdout and "v0002" in status.stdout


# -- help ------------------------------------------------------------------------------------------


def test_every_command_has_an_example_in_its_help():
    group = typer.main.get_command(app)
    names = sorted(group.commands)
    assert {"init", "extract", "train", "score", "plot", "eval", "status"} <= set(names)
    for name in names:
        res = invoke(name, "--help")
        assert res.exit_code == 0, res.output
        assert "Example:" in res.stdout, f"'vidanom {name} --help' shows no example"


def test_top_level_help_has_an_example():
    res = invoke("--help")
    assert res.exit_code == 0 and "Example:" in res.stdout


@pytest.mark.parametrize("command", ["train", "update"])
def test_no_steps_is_a_clean_error(trained_project, clips, command):
    res = invoke(command, clips.normal_a, "--steps", "0", "--device", "cpu", "-p", trained_project)
    assert res.exit_code == 2 and "--steps" in res.output and "Traceback" not in res.output
    assert Project.open(trained_project).current_version() == "v0001"


# -- Ctrl-C --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, module, function",
    [
        (("train",), "vidanom.training", "train"),
        (("update",), "vidanom.training", "update"),
        (("fleet", "train", "MANIFEST"), "vidanom.fleet.training", "train_fleet"),
        (("score", "VIDEO"), "vidanom.results", "score"),
    ],
)
def test_ctrl_c_tells_how_to_resume_what_can_be_resumed(trained_project, clips, command, module, function, monkeypatch):
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    manifest = trained_project.parent / "fleet.toml"
    manifest.write_text(f'[cameras.cam]\nproject = "{trained_project.name}"\n')
    args = [{"MANIFEST": manifest, "VIDEO": clips.anomalous}.get(a, a) for a in command]
    res = invoke(*args, *(() if command[0] == "fleet" else ("-p", trained_project)))
    assert res.exit_code == 130, res.output
    resumable = command[0] != "score"
    assert res.stderr.strip() == (RESUMABLE if resumable else "interrupted")


def test_the_lock_wait_s_default_is_the_library_s():
    import inspect

    from vidanom import training
    from vidanom.cli import train, update
    from vidanom.project import LOCK_WAIT

    for command in (train, update):
        assert inspect.signature(command).parameters["wait"].default == LOCK_WAIT
    for function in (training.train, training.update, Project.writing, Project.lock):
        assert inspect.signature(function).parameters["wait"].default == LOCK_WAIT
