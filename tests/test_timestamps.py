"""Times from timestamps end to end: a variable-frame-rate clip's CSV, summary, timeline, gallery,
annotated strip and watch events give each frame its own time, not index / fps."""

from __future__ import annotations

import csv
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import anomalous_frames, make_project, tiny_config, write_vfr

from vidanom import annotate, gallery, plot, results
from vidanom.project import Project
from vidanom.revisit import scored_clip
from vidanom.training import train
from vidanom.watch import WatchOptions, watch

CPU = torch.device("cpu")
N = len(anomalous_frames())
# irregular gaps, in ms: 40 for the first 20 frames, then long pauses between some (a camera that
# records on motion, a phone)
GAPS_MS = [40 if i < 20 else (40, 700, 40, 300)[i % 4] for i in range(1, N)]
PTS_MS = np.concatenate([[0], np.cumsum(GAPS_MS)]).astype(int).tolist()


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained_project_template: Path) -> Project:
    root = tmp_path_factory.mktemp("ts") / "proj"
    shutil.copytree(trained_project_template, root)
    return Project.open(root)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> Path:
    """The anomalous clip with irregular timestamps, as Matroska."""
    return write_vfr(tmp_path_factory.mktemp("vfr") / "vfr.mkv", PTS_MS, frames=anomalous_frames())


@pytest.fixture(scope="module")
def scored(project: Project, vfr: Path) -> results.ClipScores:
    (result,) = results.score(project, vfr, CPU)
    return result


def test_score_writes_the_timestamps_as_times(scored):
    with open(scored.csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(N))
    np.testing.assert_allclose([float(r["time"]) for r in rows], np.array(PTS_MS) / 1000, atol=5e-4)
    summary = json.loads(scored.summary.read_text())
    assert summary["duration"] == pytest.approx(PTS_MS[-1] / 1000 + 0.04)  # not N / fps = 1.92 s
    assert summary["fps"] == pytest.approx(25.0)  # the nominal rate stays
    assert scored.segments, "the clip should have an anomalous segment"
    edges = np.append(np.array(PTS_MS) / 1000, summary["duration"])
    for seg in summary["segments"]:
        assert seg["start_time"] == pytest.approx(edges[seg["start_frame"]], abs=5e-4)
        assert seg["end_time"] == pytest.approx(edges[seg["end_frame"]], abs=5e-4)
        assert seg["end_time"] - seg["start_time"] > (seg["end_frame"] - seg["start_frame"]) * 0.04 * 2


def test_stored_times_feed_the_plot_and_the_gallery(project, scored, vfr):
    scores, times, summary = results.read_scored(project, vfr.name)
    np.testing.assert_allclose(times, np.array(PTS_MS) / 1000, atol=5e-4)
    assert len(scores) == N and summary["duration"] == pytest.approx(PTS_MS[-1] / 1000 + 0.04)
    assert results.plot_clip(project, vfr.name).stat().st_size > 0
    clip = scored_clip(project, vfr)
    frames = gallery.pick_frames(clip.scores, 2, 3)
    panels = gallery.collect(project, clip, frames, CPU)
    assert [p.time for p in panels] == pytest.approx([PTS_MS[f] / 1000 for f in frames], abs=5e-4)
    assert clip.rate == pytest.approx(25.0)  # the usual step between frames is 40 ms


def test_the_annotated_strip_places_frames_by_time(project, scored, vfr, tmp_path):
    clip = scored_clip(project, vfr)
    strip = annotate.ScoreStrip(clip.scores, clip.threshold, clip.segments, 400, 20, clip.times, clip.duration)
    expected = (np.array(PTS_MS) / 1000 / clip.duration * 400).astype(int)  # by time, not by index
    assert np.abs(strip.columns - expected).max() <= 5
    assert np.abs(strip.columns - (np.arange(N) + 0.5) * 400 / N).max() > 50
    result = annotate.annotate(project, vfr, tmp_path / "vfr.annotated.mp4", CPU)
    assert result.frames == N and result.fps == pytest.approx(N / clip.duration, rel=1e-6)  # lasts as long


def test_watch_events_have_the_frames_times(project, scored, vfr):
    events = []
    status = watch(project, str(vfr), WatchOptions(), on_event=events.append, device=CPU)
    assert status.frames == N and events
    keys = ("start_frame", "end_frame", "peak_frame", "start_time", "end_time")
    assert [tuple(e[k] for k in keys) for e in events] == [tuple(s[k] for k in keys) for s in scored.segments]
    edges = np.append(np.array(PTS_MS) / 1000, PTS_MS[-1] / 1000 + 0.04)
    for e in events:
        assert e["start_time"] == pytest.approx(edges[e["start_frame"]], abs=5e-4)
        assert e["peak_time"] == pytest.approx(edges[e["peak_frame"]], abs=5e-4)
        assert e["end_time"] == pytest.approx(edges[e["end_frame"]], abs=5e-4)
        assert e["duration"] == pytest.approx(e["end_time"] - e["start_time"], abs=2e-3)


def test_an_avi_with_dropped_slots_is_scored_at_its_true_length(project, tmp_path):
    slots = [0, 7, 14, 21, 28, 40, 47, 54, 61, 89, 96, 120]  # 30 slots a second, most of them empty
    frames = anomalous_frames()[: len(slots)]
    video = write_vfr(tmp_path / "cam.avi", slots, Fraction(1, 30), frames=frames, rate=30)
    (result,) = results.score(project, video, CPU)
    summary = json.loads(result.summary.read_text())
    assert summary["duration"] == pytest.approx(121 / 30, abs=1e-3)  # not 12 frames / 30 fps = 0.4 s
    assert summary["frames"] == len(slots) and summary["warning"] is None  # every frame came: no early end
    with open(result.csv) as f:
        times = [float(r["time"]) for r in csv.DictReader(f)]
    np.testing.assert_allclose(times, np.array(slots) / 30, atol=5e-4)


def test_the_timeline_frame_axis_follows_the_times():
    edges = np.array([0.0, 0.1, 0.1, 0.8, 2.0, 2.04])  # frames 0..4, then the clip's end; 1 and 2 share a time
    xs, fs = plot._increasing(edges)
    to_frame = plot._interp(np.array([0.0, 0.1, 0.45, 0.8, 1.4, 2.0, 2.04]), xs, fs)
    assert to_frame.tolist() == pytest.approx([0, 1, 2, 3, 3.5, 4, 5])  # not time · 25 fps
    assert plot._interp(np.array([3.0, 3.5]), fs, xs).tolist() == pytest.approx([0.8, 1.4])
    assert plot._interp(np.array([-1.0, 3.04]), xs, fs).tolist() == pytest.approx([-10, 30])  # beyond both ends
    assert plot._interp(0.8, xs, fs) == pytest.approx(3.0)  # a scalar, as matplotlib may pass


def test_one_frame_rate_everywhere_the_scored_frames_rate(tmp_path, clips):
    """With frames.stride 2 a 25 fps file's scored frames come at 12.5 a second: the result, the
    summary, the stored clip and a watch of it all say so."""
    project = Project.open(make_project(tmp_path / "p", tiny_config(frames={"stride": 2})))
    train(project, [clips.folder], device=CPU)
    (result,) = results.score(project, clips.anomalous, CPU)
    summary = json.loads(result.summary.read_text())
    seen: list = []
    status = watch(project, str(clips.anomalous), WatchOptions(), on_status=seen.append, device=CPU)
    assert result.fps == summary["fps"] == scored_clip(project, clips.anomalous).fps == status.fps == 12.5
    assert result.frames == len(anomalous_frames()) // 2
