"""`vidanom accept`: a false alarm folded back into the model (what it learns, its lineage, undo), from
the command line, from Python and from watch's events; the command shown per event; and bad input."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FPS,
    NORMAL_FRAMES,
    Clips,
    background,
    invoke,
    make_project,
    private_copy,
    square_frames,
    tiny_config,
    write_video,
)
from test_cli import assert_clean_error

import vidanom
from vidanom import cache
from vidanom.accepting import accept_command, event_stretch
from vidanom.errors import VidanomError
from vidanom.project import Project
from vidanom.store import ScoreStore
from vidanom.video import Source
from vidanom.watch import WatchOptions, watch

TWICE = ((30, 50), (110, 130))  # frames of twice.mp4 that show a big square moving fast: the same kind, twice
QUICK = {"margin": 0.4, "min_steps": 20, "epochs": 2.0}  # accept settings of the quick tests: a small update


def twice_frames() -> np.ndarray:
    """160 normal frames, in which a big square crosses fast twice (TWICE)."""
    frames, _ = square_frames(160, 4, 20, 1.0, 8)
    big, _ = square_frames(20, 0, 8, 3.0, 14, (250, 250, 250))
    inside = (big != background()[None]).any(-1)
    for a, b in TWICE:
        frames[a:b][inside] = big[inside]
    return frames


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("twice") / "twice.mp4", twice_frames())


def scored_project(root: Path, clips: Clips, video: Path, **accept: float) -> Path:
    """A tiny project trained on the normal clips, with `video` scored."""
    make_project(root, tiny_config(accept=accept))
    for args in (("train", clips.folder, "--steps", "8"), ("score", video)):
        res = invoke(*args, "--device", "cpu", "-p", root)
        assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def twice_template(tmp_path_factory: pytest.TempPathFactory, clips: Clips, twice: Path) -> Path:
    return scored_project(tmp_path_factory.mktemp("twice_project") / "proj", clips, twice, **QUICK)


@pytest.fixture
def twice_project(tmp_path: Path, twice_template: Path) -> Path:
    return private_copy(twice_template, tmp_path / "proj")


def version_info(root: Path, name: str) -> dict:
    return json.loads((root / "models" / name / "version.json").read_text())


def worst(root: Path, frames: tuple[int, int]) -> float:
    """The highest score over frames [a, b) of twice.mp4 (and a few after), in thresholds."""
    stored = ScoreStore(root / "scores").read("twice.mp4")
    return float(stored.scores[frames[0] : frames[1] + 3].max() / stored.summary["threshold"])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of a project, with its size and mtime: what 'nothing changed' compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# -- it learns what was accepted ----------------------------------------------------------------------------


def test_an_accepted_event_is_learned_and_so_is_the_next_of_its_kind(tmp_path, clips, twice):
    """Accepting the first crossing lowers both crossings' scores far more than accepting as long a
    stretch of ordinary footage does (an update of as many steps: the control)."""
    template = scored_project(tmp_path / "template", clips, twice, margin=0.4)  # the default step budget
    before = [worst(template, span) for span in TWICE]
    assert min(before) > 1.5  # flagged, well over the threshold
    runs = {"event": ("--event", "1"), "control": ("--from", "3.0", "--to", "3.8")}
    after = {}
    for name, args in runs.items():
        root = private_copy(template, tmp_path / name)
        res = invoke("accept", "twice.mp4", *args, "--device", "cpu", "-p", root)
        assert res.exit_code == 0, res.output
        assert invoke("score", twice, "--device", "cpu", "-p", root).exit_code == 0
        after[name] = [worst(root, span) for span in TWICE]
    for i in range(2):  # the accepted crossing, and the next one, which was not accepted
        assert after["event"][i] < 0.75 * after["control"][i], (before, after)
        assert after["event"][i] < 0.75 * before[i], (before, after)


def test_accept_publishes_a_version_whose_lineage_says_what_was_accepted(twice_project, twice):
    res = invoke("accept", "twice.mp4", "--event", "1", "--device", "cpu", "-p", twice_project)
    assert res.exit_code == 0, res.output
    assert "model v0002: accepted twice.mp4 event 1" in res.output and "to undo: vidanom use v0001" in res.output
    info = version_info(twice_project, "v0002")
    assert info["parent"] == "v0001" and info["strategy"] == "accept" and info["scene"] == "default"
    segment = json.loads((twice_project / "scores" / "twice.mp4.json").read_text())["segments"][0]
    (accepted,) = info["accepted"]
    assert accepted["clip"] == "twice.mp4" and accepted["event"] == 1 and accepted["margin"] == 0.4
    assert (accepted["from"], accepted["to"]) == (segment["start_time"], segment["end_time"])
    assert accepted["source"] == str(twice.resolve())
    # the stretch, with its margin, is the scene's footage now, and says where it came from
    project = Project.open(twice_project)
    metas = {m.key: m for m in cache.clips(project.cache_dir, project.config.frames, "default")}
    meta = metas[accepted["key"]]
    assert meta.accepted is not None and meta.accepted["event"] == 1 and meta.accepted["clip"] == "twice.mp4"
    seconds = segment["end_time"] - segment["start_time"] + 2 * 0.4
    assert meta.frames == accepted["frames"] == pytest.approx(seconds * 25, abs=2)
    assert meta.offset == pytest.approx(segment["start_time"] - 0.4, abs=0.041)
    assert set(info["clips"]) == {"normal_a.mp4", "normal_b.mp4", meta.name}
    status = invoke("status", "-p", twice_project)
    assert "v0002 accepted as normal: twice.mp4 event 1" in status.output
    assert any("v0002" in line and "accept" in line for line in status.output.splitlines())


def test_an_accepted_stretch_sets_the_threshold_and_is_not_flagged_again(twice_project, twice):
    """The accepted stretches join the held-out frames that set the scales and the threshold (among the
    training frames alone they stayed flagged): the clip scored again flags nothing of what was accepted."""
    store = ScoreStore(twice_project / "scores")
    segment = store.read("twice.mp4").summary["segments"][0]
    a, b = segment["start_frame"], segment["end_frame"]
    assert store.read("twice.mp4").flags[a:b].all()
    assert invoke("accept", "twice.mp4", "--event", "1", "--device", "cpu", "-p", twice_project).exit_code == 0
    before, after = (version_info(twice_project, v) for v in ("v0001", "v0002"))
    (accepted,) = after["accepted"]
    assert after["held_out_frames"] == before["held_out_frames"] + accepted["frames"]
    seconds = before["seconds_of_footage"] + accepted["frames"] / FPS  # the stretch counted once
    assert after["seconds_of_footage"] == pytest.approx(seconds, abs=0.1)
    assert invoke("score", twice, "--device", "cpu", "-p", twice_project).exit_code == 0
    rescored = store.read("twice.mp4")
    # the stretch set the threshold scored as a clip of its own, from its margin on; within the whole clip
    # each frame scores a hair apart (the LSTM-MDN's state, the batches): the frame whose score set the
    # threshold may come back a hair above it, never as an event
    assert float(rescored.scores[a:b].max()) <= rescored.summary["threshold"] * 1.001
    assert rescored.flags[a:b].sum() <= 1
    assert not any(s["start_frame"] < b and s["end_frame"] > a for s in rescored.summary["segments"])


def test_undo_makes_the_version_before_current_and_its_footage_leaves_the_scene(twice_project):
    assert invoke("accept", "twice.mp4", "--event", "1", "--device", "cpu", "-p", twice_project).exit_code == 0
    project = Project.open(twice_project)
    (key,) = project.accepted_keys()
    res = invoke("use", "v0001", "-p", twice_project)
    assert res.exit_code == 0 and "model v0001 is current (it was v0002)" in res.output
    assert project.current_version() == "v0001" and project.accepted_keys() == set()
    # a training run now leaves the stretch out; the version that accepted it is still there to go back to
    res = invoke("train", "--stage", "calibrate", "--device", "cpu", "-p", twice_project)
    assert res.exit_code == 0, res.output
    assert set(version_info(twice_project, "v0003")["clips"]) == {"normal_a.mp4", "normal_b.mp4"}
    assert invoke("use", "v0002", "-p", twice_project).exit_code == 0
    assert project.current_version() == "v0002" and project.accepted_keys() == {key}


def test_several_events_are_learned_in_one_update(twice_project):
    summary = json.loads((twice_project / "scores" / "twice.mp4.json").read_text())
    assert len(summary["segments"]) >= 2
    res = invoke("accept", "twice.mp4", "-e", "1", "-e", "2", "--device", "cpu", "-p", twice_project)
    assert res.exit_code == 0, res.output
    assert [v["version"] for v in Project.open(twice_project).versions()] == ["v0001", "v0002"]
    accepted = version_info(twice_project, "v0002")["accepted"]
    assert [a["event"] for a in accepted] == [1, 2]
    spans = [(s["start_time"], s["end_time"]) for s in summary["segments"][:2]]
    assert [(a["from"], a["to"]) for a in accepted] == spans


def test_a_stretch_by_its_times_from_python(twice_project, twice):
    project = Project.open(twice_project)
    result = vidanom.accept(project, twice, start=2.0, end=3.0)  # the video's path names the scored clip too
    assert isinstance(result, vidanom.AcceptResult)
    assert result.version == "v0002" and result.parent == "v0001" and result.scene == "default"
    assert result.steps == 20 and result.frames == pytest.approx(45, abs=2)  # 1 s and a margin of 0.4 s each side
    (accepted,) = version_info(twice_project, "v0002")["accepted"]
    assert (accepted["from"], accepted["to"], accepted["event"]) == (2.0, 3.0, None)


def test_the_step_budget_grows_with_the_accepted_footage_not_the_scene():
    from vidanom.accepting import budget

    cfg = tiny_config(accept={"min_steps": 10, "max_steps": 500, "epochs": 10.0, "share": 0.5})  # batches of 16
    assert budget(cfg, 40, 0.0) == 50  # 10 passes over 40 frames, 8 of each batch
    assert budget(cfg, 4, 0.0) == 10 and budget(cfg, 4000, 0.0) == 500
    assert budget(cfg, 40, 0.5) == 100  # half the batch replays other scenes: 4 accepted frames a step


# -- the command for each event ---------------------------------------------------------------------------


def test_score_prints_for_each_event_the_command_that_accepts_it_and_it_works(twice_template, tmp_path, twice):
    root = private_copy(twice_template, tmp_path / "proj")
    res = invoke("score", twice, "--device", "cpu", "-p", root)
    segments = json.loads((root / "scores" / "twice.mp4.json").read_text())["segments"]
    lines = [line for line in res.output.splitlines() if "vidanom accept" in line]
    assert len(lines) == len(segments) >= 2
    command = lines[1][lines[1].index("vidanom accept") :]
    assert command == accept_command("twice.mp4", 2, root)
    res = invoke(*shlex.split(command)[1:], "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert version_info(root, "v0002")["accepted"][0]["event"] == 2


def test_the_report_shows_for_each_event_the_command_that_accepts_it(twice_project, tmp_path):
    res = invoke("report", "-o", tmp_path / "report", "-p", twice_project)
    assert res.exit_code == 0, res.output
    html = (tmp_path / "report" / "index.html").read_text()
    segments = json.loads((twice_project / "scores" / "twice.mp4.json").read_text())["segments"]
    for number in range(1, len(segments) + 1):
        command = accept_command("twice.mp4", number, twice_project.resolve())
        assert f'<code class="accept">{command}</code>' in html


def test_a_clip_of_a_shared_name_is_named_by_its_alias(twice_project, twice, tmp_path):
    other = tmp_path / "other" / "twice.mp4"
    other.parent.mkdir()
    shutil.copy(twice, other)
    res = invoke("score", other, "--device", "cpu", "-p", twice_project)
    store = ScoreStore(twice_project / "scores")
    alias = store.alias(store.find(Source(other)))
    assert accept_command(alias, 1, twice_project) in res.output  # the other twice.mp4 keeps its plain name
    assert invoke("accept", alias, "--event", "1", "--device", "cpu", "-p", twice_project).exit_code == 0
    assert version_info(twice_project, "v0002")["accepted"][0]["source"] == str(other.resolve())


# -- from watch's events ------------------------------------------------------------------------------------


def test_events_of_a_watched_file_are_accepted_from_their_json_lines(twice_project, twice, tmp_path):
    events: list[dict] = []
    project = Project.open(twice_project)
    watch(project, str(twice), WatchOptions(), on_event=events.append)
    assert len(events) >= 2 and all(e["kind"] == "event" for e in events)
    lines = tmp_path / "events.jsonl"
    health = {"kind": "health", "state": "down", "camera": "twice"}
    lines.write_text("\n".join(json.dumps(e) for e in [health, *events[:2]]) + "\n")
    res = invoke("accept", "--events", lines, "--device", "cpu", "-p", twice_project)
    assert res.exit_code == 0, res.output
    accepted = version_info(twice_project, "v0002")["accepted"]
    assert [(a["from"], a["to"]) for a in accepted] == [(e["start_time"], e["end_time"]) for e in events[:2]]
    assert {a["source"] for a in accepted} == {str(twice.resolve())}


def test_an_event_with_a_clip_is_accepted_in_its_clip():
    payload = {"kind": "event", "event": 3, "start_time": 61.0, "end_time": 64.5, "source": "rtsp://cam/stream"}
    with pytest.raises(VidanomError, match="--clips"):
        event_stretch(payload)  # a live stream's frames are gone
    with pytest.raises(VidanomError, match="only events"):
        event_stretch({"kind": "health", "state": "down"})
    clip = Path(__file__)  # any file that exists stands for the event's clip here
    s = event_stretch({**payload, "clip": str(clip), "clip_start_time": 56.0})
    assert (s.source, s.start, s.end, s.event) == (clip, 5.0, 8.5, 3)


# -- bad input: one line, exit 2, nothing changed ----------------------------------------------------------

BAD = {
    "no such event": (("twice.mp4", "--event", "99"), "not event 99"),
    "event zero": (("twice.mp4", "--event", "0"), "not event 0"),
    "after the end": (("twice.mp4", "--from", "5.0", "--to", "60"), "lasts 6.40 s"),
    "backwards": (("twice.mp4", "--from", "3", "--to", "2"), "0 <= from < to"),
    "from alone": (("twice.mp4", "--from", "3"), "0 <= from < to"),
    "never scored": (("normal_a.mp4", "--event", "1"), "run 'vidanom score normal_a.mp4' first"),
    "both": (("twice.mp4", "--event", "1", "--from", "1", "--to", "2"), "--event N"),
    "neither": (("twice.mp4",), "--event N"),
    "no clip": ((), "name a scored CLIP"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(twice_project, case):
    args, message = BAD[case]
    before = snapshot(twice_project)
    assert_clean_error(invoke("accept", *args, "--device", "cpu", "-p", twice_project), 2, message)
    assert snapshot(twice_project) == before


def test_unknown_versions_and_event_files_without_events_are_refused(twice_project, tmp_path):
    before = snapshot(twice_project)
    assert_clean_error(invoke("use", "v0009", "-p", twice_project), 2, "no model version 'v0009'")
    empty = tmp_path / "events.jsonl"
    empty.write_text('{"kind": "health", "state": "down"}\n')
    assert_clean_error(invoke("accept", "--events", empty, "-p", twice_project), 2, "holds no event")
    empty.write_text("not json\n")
    assert_clean_error(invoke("accept", "--events", empty, "-p", twice_project), 2, "line 1")
    assert snapshot(twice_project) == before


def test_accept_refuses_a_clip_scored_as_another_scene(twice_project):
    summary_path = twice_project / "scores" / "twice.mp4.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "scene_frames": {"night": NORMAL_FRAMES}}))
    assert_clean_error(invoke("accept", "twice.mp4", "-e", "1", "-p", twice_project), 2, "latest scene 'default'")


def test_accept_after_an_update_learns_into_the_new_scene_and_keeps_the_old_one(trained_project, tmp_path):
    """After learning a second scene at twice the frame rate, an accept goes into that scene: it is
    calibrated anew (its stretch held out too), the first scene is carried whole, and the models' motion
    interval stays the first scene's, the longer one."""
    frames, _ = square_frames(2 * NORMAL_FRAMES, 10, 4, 1.0, 8)
    (tmp_path / "night").mkdir()
    night = write_video(tmp_path / "night" / "n1.mp4", 255 - frames, fps=2 * FPS)
    for args in (("update", night.parent, "--scene", "night", "--steps", "8"), ("score", night)):
        res = invoke(*args, "--device", "cpu", "-p", trained_project)
        assert res.exit_code == 0, res.output
    project = Project.open(trained_project)
    before = vidanom.Detector.load(project).calibration
    result = vidanom.accept(project, night, start=1.0, end=2.0)
    after = vidanom.Detector.load(project).calibration
    assert result.scene == "night" and after.scenes == before.scenes == ["default", "night"]
    assert after.frame_interval == before.frame_interval == pytest.approx(1 / FPS, rel=0.01)
    for key in ("comp_mean", "comp_std", "err_mean", "kl_mean", "thresholds"):  # the first scene: as it was carried
        assert torch.equal(getattr(after, key)[0], getattr(before, key)[0]) == (key not in ("err_mean", "kl_mean"))
    assert not torch.equal(after.comp_std[1], before.comp_std[1])  # the scene accepted into: calibrated anew
    info = json.loads((trained_project / "models" / result.version / "version.json").read_text())
    assert info["calibration"]["night"]["on"] == "footage" and info["calibration"]["default"]["on"] == "carried"
