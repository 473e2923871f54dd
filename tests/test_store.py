"""Where a clip's results live (vidanom.store): two sources never share them, names stay recognisable,
and every reader (plot, annotate, gallery, eval, the report, the fleet) finds them through the store."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from conftest import ANOMALY, Clips, invoke

from vidanom import results
from vidanom.errors import VidanomError
from vidanom.project import Project
from vidanom.report import build_report
from vidanom.store import ScoreStore
from vidanom.video import Source

CPU = torch.device("cpu")


@pytest.fixture
def twins(tmp_path: Path, clips: Clips) -> tuple[Path, Path]:
    """Two different videos of the same file name, in two folders (two days of one camera)."""
    a, b = tmp_path / "day1" / "clip.mp4", tmp_path / "day2" / "clip.mp4"
    for src, dst in ((clips.anomalous, a), (clips.normal_a, b)):
        dst.parent.mkdir()
        shutil.copy(src, dst)
    return a, b


def test_two_clips_of_one_name_keep_their_own_results(trained_project: Path, twins):
    a, b = twins
    project = Project.open(trained_project)
    (first,) = results.score(project, a, CPU)
    (second,) = results.score(project, b, CPU)
    assert first.key == "clip.mp4" and re.fullmatch(r"clip\.mp4~[0-9a-f]{8}", second.key)
    assert first.name == second.name == "clip.mp4"
    assert first.csv != second.csv and first.csv.exists() and second.csv.exists()
    for r, src in ((first, a), (second, b)):
        assert json.loads(r.summary.read_text())["source"] == str(src.resolve())
        assert r.frames == len(results.read_scored(project, r.key)[0])
    (again,) = results.score(project, b, CPU)  # scoring a source again uses its own key
    assert again.key == second.key
    assert results.scored_clips(project) == sorted([first.key, second.key])


def test_a_clip_name_shared_by_two_sources_is_refused_by_name_and_accepted_by_key_or_path(trained_project, twins):
    a, b = twins
    project = Project.open(trained_project)
    (first,) = results.score(project, a, CPU)
    (second,) = results.score(project, b, CPU)
    res = invoke("plot", "clip.mp4", "-p", trained_project)
    assert res.exit_code == 2 and "2 scored clips are named clip.mp4" in res.stderr and second.key in res.stderr
    assert invoke("plot", second.key, "-p", trained_project).exit_code == 0
    res = invoke("gallery", b, "-k", "2", "--device", "cpu", "-p", trained_project)
    assert res.exit_code == 0, res.output
    assert (trained_project / "scores" / f"{second.key}.gallery.png").exists()
    assert not (trained_project / "scores" / f"{first.key}.gallery.png").exists()
    labels = trained_project / "labels.json"
    store = ScoreStore.of(project)
    labels.write_text(json.dumps({store.alias(first.key): [list(ANOMALY)], second.key: [[0, 4]]}))
    res = invoke("eval", labels, "--json", "-p", trained_project)
    assert res.exit_code == 0 and json.loads(res.stdout)["clips"] == 2, res.output


def test_the_plain_name_of_a_clip_scored_once_is_still_accepted(scored: Path, clips: Clips):
    assert invoke("plot", "anom.mp4", "-p", scored).exit_code == 0
    res = invoke("gallery", "anom.mp4", "-k", "2", "--device", "cpu", "-p", scored)
    assert res.exit_code == 0, res.output
    assert ScoreStore.of(Project.open(scored)).find(Source(clips.anomalous)) == "anom.mp4"


def test_the_report_shows_both_clips_of_one_name(trained_project, twins, tmp_path):
    project = Project.open(trained_project)
    for video in twins:
        results.score(project, video, CPU)
    report = build_report([("cam", project)], tmp_path / "report")
    assert report.clips == 2


def test_two_scorers_at_once_never_take_the_same_name(tmp_path: Path, twins):
    store = ScoreStore(tmp_path / "scores")
    store.folder.mkdir()
    keys: list[str] = []
    start = threading.Barrier(2)

    def claim(video: Path) -> None:
        start.wait()
        keys.append(store.key_for(Source(video)))

    threads = [threading.Thread(target=claim, args=(v,)) for v in twins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(keys, key=len)[0] == "clip.mp4" and len(set(keys)) == 2
    assert {store.key_for(Source(v)) for v in twins} == set(keys)  # each keeps its own


def test_results_written_before_the_store_belong_to_the_source_their_summary_names(scored: Path, clips: Clips):
    store = ScoreStore.of(Project.open(scored))
    for claim in store.folder.glob(".*.source"):
        claim.unlink()  # as a release before this one left them: a summary, no record of its owner
    assert store.find(Source(clips.anomalous)) == "anom.mp4"
    other = scored / "other" / "anom.mp4"
    other.parent.mkdir()
    shutil.copy(clips.normal_a, other)
    assert store.find(Source(other)) is None and store.key_for(Source(other)) != "anom.mp4"
    with pytest.raises(VidanomError, match="no stored scores"):
        store.resolve("missing.mp4")
