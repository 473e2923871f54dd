"""The library's Detector gives, frame by frame, what `vidanom score` writes to its CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import Clips

from vidanom.detector import Detector
from vidanom.errors import ConfigError
from vidanom.project import Project
from vidanom.video import find_sources, iter_timed_chunks


def stored_rows(project: Path, clip: str) -> list[dict[str, str]]:
    with open(project / "scores" / f"{clip}.csv") as f:
        return list(csv.DictReader(f))


def test_score_video_matches_the_scored_csv(scored: Path, clips: Clips) -> None:
    detector = Detector.load(Project.open(scored))
    frames = list(detector.score_video(clips.anomalous))
    rows = stored_rows(scored, clips.anomalous.name)
    assert len(frames) == len(rows) == clips.n_frames
    for f, r in zip(frames, rows):
        assert f.frame == int(r["frame"]) and f.time == pytest.approx(float(r["time"]), abs=1e-3)
        assert f.score == pytest.approx(float(r["score"]), rel=1e-3, abs=1e-3)
        for name in ("recon", "kl", "nll", "still", "frozen"):
            value = getattr(f, name)
            assert (math.isnan(value) and r[name] == "") or value == pytest.approx(float(r[name]), rel=1e-3, abs=1e-3)
        assert f.anomalous == (r["anomalous"] == "1") == (f.score > detector.threshold)
        assert f.scene == r["scene"]
    assert math.isnan(frames[0].nll) and math.isnan(frames[0].still)  # the LSTM-MDN's warm-up
    assert any(f.anomalous for f in frames)  # the fixture's anomaly is found


def test_score_frames_in_memory_equals_streaming(scored: Path, clips: Clips) -> None:
    detector = Detector.load(scored)
    (src,) = find_sources([clips.anomalous])
    parts = list(iter_timed_chunks(src, detector.config.frames, 7))
    frames, times = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    whole = detector.score_frames(frames, times)
    streamed = [f.score for f in detector.score_video(clips.anomalous)]
    np.testing.assert_allclose(whole.scores, streamed, rtol=1e-4, atol=1e-4)
    assert whole.components.shape == (len(frames), 6)
    with pytest.raises(ConfigError, match="frames must be uint8"):
        detector.score_frames(frames[..., :1].repeat(3, -1), times)
