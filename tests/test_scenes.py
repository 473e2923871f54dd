"""The synthetic scene generator: determinism, the written file, and labels that match the pixels."""

from __future__ import annotations

from dataclasses import replace

import av
import numpy as np
import pytest

import scenes as synth  # sample_videos/scenes.py, on pytest's pythonpath

# Small frames keep every test fast; the layout scales with the frame.
TINY_A = replace(synth.SCENE_A, width=64, height=48)
TINY_B = replace(synth.SCENE_B, width=48, height=64)


def _render(scene, frames, anomalies, seed):
    return np.stack(list(synth.render_clip(scene, frames, anomalies, seed)))


def _decode(path):
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context.name
        return codec, np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _changed_ranges(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of frames where two renders differ anywhere."""
    changed = (a != b).reshape(len(a), -1).any(1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], changed.astype(int), [0]])))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2])]


def test_render_is_deterministic_for_a_seed():
    a = _render(TINY_A, 12, [("fast", 3, 9)], seed=4)
    b = _render(TINY_A, 12, [("fast", 3, 9)], seed=4)
    c = _render(TINY_A, 12, [("fast", 3, 9)], seed=5)
    assert a.shape == (12, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_the_view_depends_on_the_scene_not_the_clip_seed():
    still = replace(TINY_A, walkers=0, noise=0.0)
    np.testing.assert_array_equal(_render(still, 2, [], seed=1), _render(still, 2, [], seed=2))
    assert (_render(still, 1, [], 0) != _render(replace(still, layout_seed=9), 1, [], 0)).any()


def test_scenes_a_and_b_look_different():
    a = _render(synth.SCENE_A, 1, [], seed=0)[0].astype(float)
    b = _render(synth.SCENE_B, 1, [], seed=0)[0].astype(float)
    assert a.mean() - b.mean() > 40  # B is the dark scene


def test_write_clip_writes_a_decodable_h264_file(tmp_path):
    path = tmp_path / "clip.mp4"
    ranges = synth.write_clip(path, TINY_A, 15, [("intruder", 5, 10)], seed=1)
    codec, frames = _decode(path)
    assert codec == "h264"
    assert frames.shape == (15, 48, 64, 3)
    assert ranges == [(5, 10)]
    # lossy, but the frames are the rendered ones
    rendered = _render(TINY_A, 15, [("intruder", 5, 10)], seed=1)
    assert np.abs(frames.astype(int) - rendered).mean() < 8


def test_write_clip_falls_back_to_mpeg4(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "ENCODERS", ("no-such-encoder", "mpeg4"))
    path = tmp_path / "clip.mp4"
    synth.write_clip(path, TINY_A, 4, [], seed=0)
    codec, frames = _decode(path)
    assert codec == "mpeg4" and frames.shape == (4, 48, 64, 3)


@pytest.mark.parametrize("scene", [TINY_A, TINY_B], ids=["A", "B"])
@pytest.mark.parametrize("kind", synth.KINDS)
def test_labels_are_exactly_the_frames_the_anomaly_changes(tmp_path, scene, kind):
    anomalies = [(kind, 4, 17)]
    ranges = synth.write_clip(tmp_path / "clip.mp4", scene, 24, anomalies, seed=3)
    assert ranges == [(4, 17)]
    with_it = _render(scene, 24, anomalies, seed=3)
    without = _render(scene, 24, [], seed=3)
    assert _changed_ranges(with_it, without) == ranges


def test_touching_and_overlapping_anomalies_merge_and_may_run_to_the_end(tmp_path):
    anomalies = [("fast", 2, 6), ("loiter", 6, 9), ("wrong_way", 12, 20), ("intruder", 15, 20)]
    ranges = synth.write_clip(tmp_path / "clip.mp4", TINY_A, 20, anomalies, seed=8)
    assert ranges == [(2, 9), (12, 20)]
    assert _changed_ranges(_render(TINY_A, 20, anomalies, 8), _render(TINY_A, 20, [], 8)) == ranges


def test_bad_arguments_are_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        synth.render_clip(TINY_A, 10, [("teleport", 1, 3)])
    with pytest.raises(ValueError, match="within the clip"):
        synth.render_clip(TINY_A, 10, [("fast", 5, 11)])
    with pytest.raises(ValueError, match="within the clip"):
        synth.write_clip(tmp_path / "x.mp4", TINY_A, 10, [("fast", 4, 4)])
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(ValueError, match="even"):
        replace(TINY_A, width=63)
