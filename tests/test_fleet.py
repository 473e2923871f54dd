"""The fleet: a manifest of cameras trained, scored, reported on and watched on Ray.

One small local Ray session (2 CPUs, loopback, no dashboard) serves the whole module and is shut
down after it; the fleet's commands find it running and use it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import pytest
from conftest import EVENT_KEYS, Clips, anomalous_frames, invoke, private_copy, write_video

from vidanom.config import ProjectConfig
from vidanom.errors import VidanomError
from vidanom.fleet.engine import Engine, session
from vidanom.fleet.manifest import read_manifest
from vidanom.fleet.scoring import EVENT_COLUMNS, score_fleet
from vidanom.fleet.watching import watch_fleet
from vidanom.project import Project
from vidanom.watch import WatchOptions, watch

pytestmark = pytest.mark.usefixtures("ray_installed")


@pytest.fixture(scope="module")
def ray_session(ray_installed):
    environ = dict(os.environ)
    with session(Engine(local_cpus=2)) as ray:
        yield ray
    # Ray leaves variables of its own in the environment; the processes later tests start must not inherit them
    os.environ.clear()
    os.environ.update(environ)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def site(tmp_path: Path, clips: Clips, trained_project_template: Path) -> Path:
    """Two trained cameras (gate, door) and their footage, as a fleet's folder holds them."""
    for camera in ("gate", "door"):
        private_copy(trained_project_template, tmp_path / "projects" / camera)
        day = tmp_path / "footage" / camera / "day1"
        day.mkdir(parents=True)
        shutil.copy(clips.anomalous, day / "anom.mp4")
        shutil.copy(clips.normal_a, day / "normal_a.mp4")
    write(
        tmp_path / "fleet.toml",
        "\n".join(
            f'[cameras.{c}]\nproject = "projects/{c}"\nscore = ["footage/{c}/day1/*.mp4"]\n' for c in ("gate", "door")
        ),
    )
    return tmp_path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the manifest ----------------------------------------------------------------------------------


def test_the_manifest_names_cameras_and_says_what_is_wrong_with_each(tmp_path: Path):
    path = write(
        tmp_path / "fleet.toml",
        """
[cameras.gate]
project = "projects/gate"
train = "footage/gate/normal/*.mp4"
score = ["footage/gate/2026-12-01/*.mp4", "/abs/clip.mp4"]
scene = "day"

[cameras.door]
project = "projects/door"
scroe = ["x.mp4"]

[cameras.yard]
train = ["y.mp4"]

[other]
x = 1
""",
    )
    m = read_manifest(path)
    assert [c.name for c in m.cameras] == ["gate"]
    gate = m.cameras[0]
    assert gate.project == tmp_path / "projects" / "gate" and gate.scene == "day"
    assert gate.train == (str(tmp_path / "footage/gate/normal/*.mp4"),)
    assert gate.score[1] == "/abs/clip.mp4"
    assert len(m.problems) == 3
    assert any("door" in p and "'scroe'" in p for p in m.problems)
    assert any("yard" in p and "project" in p for p in m.problems)
    assert any("'other'" in p for p in m.problems)


@pytest.mark.parametrize(
    "text, match", [("not = [toml", "not valid TOML"), ("[x]\ny = 1", "names no cameras"), (None, "cannot read")]
)
def test_an_unreadable_manifest_is_an_error(tmp_path: Path, text: str | None, match: str):
    path = tmp_path / "fleet.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(VidanomError, match=match):
        read_manifest(path)


# -- fleet score -----------------------------------------------------------------------------------


def test_fleet_score_writes_each_clips_outputs_and_one_events_table(ray_session, site: Path, clips: Clips):
    res = invoke("fleet", "score", site / "fleet.toml")
    assert res.exit_code == 0, res.output
    rows = read_rows(site / "events.csv")
    assert rows and set(rows[0]) == set(EVENT_COLUMNS)
    assert [{k: str(v) for k, v in r.items()} for r in json.loads((site / "events.json").read_text())] == rows
    for camera in ("gate", "door"):
        scores = site / "projects" / camera / "scores"
        for clip in ("anom.mp4", "normal_a.mp4"):
            assert all((scores / f"{clip}{ext}").is_file() for ext in (".csv", ".json", ".png"))
        summary = json.loads((scores / "anom.mp4.json").read_text())
        mine = [r for r in rows if r["camera"] == camera and r["clip"] == "anom.mp4"]
        assert [(int(r["start_frame"]), int(r["end_frame"])) for r in mine] == [
            (s["start_frame"], s["end_frame"]) for s in summary["segments"]
        ]
        assert all(r["model_version"] == "v0001" and r["source"] == summary["source"] for r in mine)
    # the same as `vidanom score` gives for the clip
    alone = private_copy(site / "projects" / "gate", site / "alone")
    assert invoke("score", clips.anomalous, "--device", "cpu", "-p", alone).exit_code == 0
    reference = json.loads((alone / "scores" / "anom.mp4.json").read_text())["segments"]
    assert json.loads((site / "projects/gate/scores/anom.mp4.json").read_text())["segments"] == reference
    # again: everything already scored by this version is skipped, and the table is the same
    before = (site / "events.csv").read_text()
    r = score_fleet(read_manifest(site / "fleet.toml"))
    assert [c.state for c in r.clips] == ["skipped"] * 4 and r.workers == 0
    assert (site / "events.csv").read_text() == before
    r = score_fleet(read_manifest(site / "fleet.toml"), Engine(workers=1), force=True, out=site / "again")
    assert [c.state for c in r.clips] == ["scored"] * 4 and r.workers == 1
    assert (site / "again" / "events.csv").read_text() == before


def test_two_clips_of_one_name_are_scored_once_each_and_skipped_after(ray_session, site: Path, clips: Clips):
    day2 = site / "footage" / "gate" / "day2"
    day2.mkdir()
    shutil.copy(clips.normal_b, day2 / "anom.mp4")  # another video of the name day1 has
    write(site / "fleet.toml", '[cameras.gate]\nproject = "projects/gate"\nscore = ["footage/gate/*/anom.mp4"]\n')
    first = score_fleet(read_manifest(site / "fleet.toml"), Engine(workers=1))
    assert [c.state for c in first.clips] == ["scored"] * 2, [c.error for c in first.clips]
    keys = sorted(c.clip for c in first.clips)
    assert keys[0] == "anom.mp4" and keys[1].startswith("anom.mp4~")
    scores = site / "projects" / "gate" / "scores"
    sources = {json.loads((scores / f"{k}.json").read_text())["source"] for k in keys}
    assert sources == {str((site / "footage" / "gate" / d / "anom.mp4").resolve()) for d in ("day1", "day2")}
    again = score_fleet(read_manifest(site / "fleet.toml"))
    assert [c.state for c in again.clips] == ["skipped"] * 2 and sorted(c.clip for c in again.clips) == keys
    assert {r["clip"] for r in again.events} <= set(keys)
    ((camera, scored, skipped, failed, frames, events),) = [astuple(t) for t in first.totals()]
    assert (camera, scored, skipped, failed) == ("gate", 2, 0, 0) and first.rate is not None and first.rate > 0
    assert frames == sum(c.frames for c in first.clips) > 0 and events == len(first.events)
    assert [astuple(t)[1:4] for t in again.totals()] == [(0, 2, 0)] and again.rate is None


def test_bad_input_fails_alone_with_a_line_each(ray_session, site: Path):
    (site / "footage" / "gate" / "day1" / "notes.mp4").write_text("not a video\n")
    with open(site / "fleet.toml", "a") as f:
        f.write('\n[cameras.yard]\nproject = "projects/yard"\nscore = ["footage/yard/*.mp4"]\n')
        f.write('\n[cameras.shed]\nproject = "projects/gate"\nscore = "footage/shed/*.mp4"\n')
        f.write('\n[cameras.roof]\nproject = "projects/door"\nlive = "rtsp://x"\nzoom = 2\n')
    res = invoke("fleet", "score", site / "fleet.toml")
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, res.stderr
    assert any("roof" in e and "'zoom'" in e for e in errors)
    assert any("yard" in e and "no project" in e for e in errors)
    assert any("shed" in e and "matches nothing" in e for e in errors)
    assert any("gate" in e and "notes.mp4" in e and "cannot read" in e for e in errors)
    for camera in ("gate", "door"):  # the others were scored all the same
        assert (site / "projects" / camera / "scores" / "anom.mp4.json").is_file()


def test_a_clip_whose_worker_died_is_scored_again(ray_session, site: Path):
    marker = str(site / "died")

    def die_once(job):  # runs in the worker: kills it the first time it takes the anomalous clip
        if job.source.endswith("anom.mp4") and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)

    r = score_fleet(read_manifest(site / "fleet.toml"), Engine(workers=2), before_clip=die_once)
    assert os.path.exists(marker) and not r.failed and not r.problems
    assert sorted(c.state for c in r.clips) == ["scored"] * 4
    assert len({c.worker for c in r.clips}) >= 2  # a fresh worker took over


def test_fleet_status_lists_the_manifest_problems_as_errors(tmp_path: Path):
    manifest = tmp_path / "fleet.toml"
    manifest.write_text('[cameras.a]\nproject = "nowhere"\nbogus = 1\n[cameras.b]\nproject = "missing"\n')
    res = invoke("fleet", "status", manifest)
    assert res.exit_code == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "camera a: unknown key(s) 'bogus'" in lines[0] and "camera b: no project" in lines[1]


def test_fleet_status_shows_what_is_scored_and_pending(ray_session, site: Path):
    res = invoke("fleet", "status", site / "fleet.toml")
    assert res.exit_code == 0, res.output
    assert "gate" in res.stdout and "v0001" in res.stdout
    score_fleet(read_manifest(site / "fleet.toml"))
    from vidanom.fleet.overview import fleet_status

    cameras, problems = fleet_status(read_manifest(site / "fleet.toml"))
    assert [(c.camera, c.version, c.score, c.scored, c.pending) for c in cameras] == [
        ("gate", "v0001", 2, 2, 0),
        ("door", "v0001", 2, 2, 0),
    ]
    res = invoke("fleet", "report", site / "fleet.toml", "--device", "cpu")
    assert res.exit_code == 0, res.output
    page = (site / "report" / "index.html").read_text()
    assert "gate" in page and "door" in page


# -- fleet train -----------------------------------------------------------------------------------


def test_fleet_train_trains_each_camera_and_creates_missing_projects(ray_session, tmp_path: Path, clips: Clips):
    write(
        tmp_path / "fleet.toml",
        f"""
[cameras.new]
project = "projects/new"
train = ["{clips.normal_a}", "{clips.normal_b}"]

[cameras.cached]
project = "projects/cached"
train = "{clips.folder}/*.mp4"

[cameras.nothing]
project = "projects/nothing"
train = "footage/none/*.mp4"
""",
    )
    from conftest import make_project

    make_project(tmp_path / "projects" / "cached")
    res = invoke("fleet", "train", tmp_path / "fleet.toml", "--steps", "4")
    assert res.exit_code == 2, res.output
    assert res.stderr.count("error:") == 1 and "nothing" in res.stderr and "matches nothing" in res.stderr
    for camera in ("new", "cached"):
        project = Project.open(tmp_path / "projects" / camera)
        assert project.current_version() == "v0001" and not (project.root / "lock").exists()
        assert project.versions()[0]["vae"]["steps"] == 4
    assert Project.open(tmp_path / "projects" / "new").config.vae == ProjectConfig().vae  # the default config
    assert not (tmp_path / "projects" / "nothing").exists()


# -- fleet watch -----------------------------------------------------------------------------------


def test_fleet_watch_reports_every_cameras_events_with_its_name(ray_session, site: Path, clips: Clips):
    write(
        site / "fleet.toml",
        "\n".join(f'[cameras.{c}]\nproject = "projects/{c}"\nlive = "{clips.anomalous}"\n' for c in ("gate", "door")),
    )
    res = invoke("fleet", "watch", site / "fleet.toml")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    expected = []
    watch(Project.open(site / "projects" / "gate"), str(clips.anomalous), WatchOptions(), on_event=expected.append)
    assert expected
    for camera in ("gate", "door"):
        mine = [tuple(e[k] for k in EVENT_KEYS) for e in lines if e["camera"] == camera]
        assert mine == [tuple(e[k] for k in EVENT_KEYS) for e in expected]
    assert "camera gate: ended: 48 frames scored" in res.stderr
    assert not any(any((site / "projects" / c / "scores").iterdir()) for c in ("gate", "door"))  # nothing written


def test_fleet_watch_reads_a_cameras_rtsp_stream(ray_session, rtsp, site: Path, tmp_path: Path):
    clip = write_video(tmp_path / "anom_h264.mp4", anomalous_frames(), codec="libx264")
    server = rtsp(clip)
    write(site / "fleet.toml", f'[cameras.gate]\nproject = "projects/gate"\nlive = "{server.url}"\n')
    res = invoke("fleet", "watch", site / "fleet.toml", "--no-reconnect", "--max-latency", "30")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    expected: list[dict] = []
    watch(Project.open(site / "projects" / "gate"), str(clip), WatchOptions(), on_event=expected.append)
    assert expected and all(e["camera"] == "gate" and e["source"] == server.url for e in lines)
    assert [tuple(e[k] for k in EVENT_KEYS) for e in lines] == [tuple(e[k] for k in EVENT_KEYS) for e in expected]
    assert "camera gate: ended: 48 frames scored, 0 dropped" in res.stderr


def test_fleet_watch_writes_each_cameras_clips_and_notifies_from_the_manifest(ray_session, site: Path, clips, hook):
    endpoint = hook()
    write(
        site / "fleet.toml",
        f'[watch]\nclips = "clips"\npre = 0.3\npost = 0.2\n'
        f'[cameras.gate]\nproject = "projects/gate"\nlive = "{clips.anomalous}"\nwebhook = "{endpoint.url}"\n'
        f'[cameras.door]\nproject = "projects/door"\nlive = "{clips.anomalous}"\n',
    )
    res = invoke("fleet", "watch", site / "fleet.toml", "--post", "0.1")  # a flag over [watch]
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert {e["camera"] for e in lines} == {"gate", "door"}
    for e in lines:
        clip = Path(e["clip"])
        assert clip.parent == site / "clips" / e["camera"] and clip.is_file() and Path(e["snapshot"]).is_file()
        assert e["clip_end_time"] <= e["end_time"] + 0.1 + 0.04 + 1e-6  # --post 0.1, not [watch]'s 0.2
    assert endpoint.bodies == [e for e in lines if e["camera"] == "gate"]  # only gate has the webhook
    assert "camera gate: outputs: 1 clip(s)" in res.stderr and "webhook 1 sent" in res.stderr


def test_the_fleet_table_says_how_long_a_camera_is_down():
    from vidanom.cli import _FleetView
    from vidanom.fleet.watching import CameraState

    down = CameraState("gate", "reconnecting", {"down": 12.4, "reason": "the stream ended"})
    assert _FleetView.state(down) == "DOWN 12 s (the stream ended)"
    assert _FleetView.state(CameraState("door", "watching", {})) == "watching"


def test_a_camera_whose_actor_died_is_watched_again(ray_session, site: Path, clips: Clips):
    write(site / "fleet.toml", f'[cameras.gate]\nproject = "projects/gate"\nlive = "{clips.normal_a}"\n')
    killed = []

    def kill_once(states):
        s = states[0]
        if not killed and s.status and s.status["frames"] > 10:
            killed.append(int(s.worker.rsplit(":", 1)[1]))
            os.kill(killed[0], signal.SIGKILL)

    states, problems = watch_fleet(read_manifest(site / "fleet.toml"), on_change=kill_once)
    assert killed and not problems
    (s,) = states
    assert s.state == "ended" and s.restarts == 1 and int(s.worker.rsplit(":", 1)[1]) != killed[0]
    assert s.status["frames"] == clips.normal_frames  # the restarted watch played the file to its end


def test_the_engine_runs_as_many_workers_as_its_cpus_hold(ray_session):
    from vidanom.fleet.engine import capacity

    assert capacity(ray_session, Engine()) == 2 and capacity(ray_session, Engine(cpus_per_worker=0.5)) == 4
    assert capacity(ray_session, Engine(workers=3)) == 3
    for engine, match in ((Engine(cpus_per_worker=3), "CPUs"), (Engine(gpus_per_worker=0.5), "GPUs")):
        with pytest.raises(VidanomError, match=match):
            capacity(ray_session, engine)
    with pytest.raises(VidanomError):
        Engine(cpus_per_worker=0)


# -- the package -----------------------------------------------------------------------------------


def test_importing_vidanom_and_its_cli_does_not_import_ray():
    code = "import sys, vidanom, vidanom.cli, vidanom.fleet.scoring; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_fleet_command_has_an_example_in_its_help():
    for name in ("train", "score", "status", "watch", "report"):
        res = invoke("fleet", name, "--help")
        assert res.exit_code == 0 and "Example:" in res.stdout, name
