"""The frame cache: extract once, memory-mapped loads, keys that follow the file and the frame settings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import VFR_PTS_MS, invoke, make_project, square_frames, tiny_config, write_vfr, write_video

from vidanom import cache
from vidanom.config import FrameConfig
from vidanom.errors import VideoError
from vidanom.project import Project
from vidanom.training import extract
from vidanom.video import Source, iter_chunks

FC = FrameConfig(width=32, height=24, channels=1)


def test_extract_writes_a_memory_mapped_clip_equal_to_the_decoded_frames(clips, tmp_path):
    seen = []
    meta, new = cache.extract(tmp_path, Source(clips.normal_a), FC, "street", seen.append)
    assert new
    assert (meta.name, meta.scene, meta.frames, meta.height, meta.width, meta.channels, meta.stride) == (
        "normal_a.mp4",
        "street",
        clips.normal_frames,
        24,
        32,
        1,
        1,
    )
    assert meta.fps == pytest.approx(25.0) and not meta.truncated
    assert sum(seen) == clips.normal_frames
    frames = cache.load(tmp_path, meta)
    assert isinstance(frames, np.memmap) and frames.dtype == np.uint8
    assert frames.shape == (clips.normal_frames, 24, 32, 1)
    np.testing.assert_array_equal(frames, np.concatenate(list(iter_chunks(Source(clips.normal_a), FC, 16))))
    assert cache.find(tmp_path, meta.key) == meta
    times = cache.load_times(tmp_path, meta)
    np.testing.assert_allclose(times, np.arange(clips.normal_frames) / 25.0, atol=1e-9)  # a constant-rate clip
    assert meta.duration == pytest.approx(clips.normal_frames / 25.0)
    assert cache.size_bytes(tmp_path) == frames.nbytes + times.nbytes


def test_extract_twice_does_not_decode_again(clips, tmp_path, monkeypatch):
    meta, _ = cache.extract(tmp_path, Source(clips.normal_a), FC, "default")
    raw = tmp_path / f"{meta.key}.u8"
    before = raw.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a clip that is already cached")

    monkeypatch.setattr(cache, "iter_timed_chunks", no_decoding)
    again, new = cache.extract(tmp_path, Source(clips.normal_a), FC, "default", no_decoding)
    assert not new and again == meta
    assert raw.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([raw.name, f"{meta.key}.t", f"{meta.key}.json"])


def test_a_clip_cached_as_one_scene_is_refused_as_another_before_anything_is_extracted(clips, project):
    first = invoke("extract", clips.normal_a, "--scene", "day", "-p", project)
    assert first.exit_code == 0, first.output
    before = sorted(p.name for p in (project / "cache").iterdir())
    res = invoke("extract", clips.folder, "--scene", "night", "-p", project)  # normal_a and normal_b
    assert res.exit_code == 2 and res.stderr.startswith("error: normal_a.mp4 is already cached as scene 'day'")
    assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (project / "cache").iterdir()) == before  # normal_b was not extracted either
    frames = Project.open(project).config.frames
    assert [m.name for m in cache.clips(project / "cache", frames, "day")] == ["normal_a.mp4"]
    assert cache.clips(project / "cache", frames, "night") == []
    again = invoke("extract", clips.folder, "--scene", "day", "-p", project)  # its own scene: fine
    assert again.exit_code == 0 and "normal_a.mp4" in again.stdout and "already cached" in again.stdout


def test_other_frame_settings_or_a_changed_file_are_extracted_anew(clips, tmp_path):
    video = tmp_path / "clip.mp4"
    shutil.copy(clips.normal_a, video)
    cache_dir = tmp_path / "cache"
    a, _ = cache.extract(cache_dir, Source(video), FC, "default")
    gray_stride2 = FrameConfig(width=32, height=24, channels=1, stride=2)
    b, new_b = cache.extract(cache_dir, Source(video), gray_stride2, "default")
    assert new_b and b.key != a.key and b.frames == -(-clips.normal_frames // 2)
    # clips() only lists clips cached with the asked-for settings
    assert [m.key for m in cache.clips(cache_dir, FC)] == [a.key]
    assert [m.key for m in cache.clips(cache_dir, gray_stride2)] == [b.key]
    write_video(video, square_frames(20, 0, 5, 2.0, 6)[0])  # the file changes: new content, new key
    c, new_c = cache.extract(cache_dir, Source(video), FC, "default")
    assert new_c and c.key != a.key and c.frames == 20


def test_damaged_metadata_means_extract_again(clips, tmp_path):
    meta, _ = cache.extract(tmp_path, Source(clips.normal_a), FC, "default")
    (tmp_path / f"{meta.key}.json").write_text("{ half written")
    assert cache.find(tmp_path, meta.key) is None
    again, new = cache.extract(tmp_path, Source(clips.normal_a), FC, "default")
    assert new and again == meta


def test_frame_folder_key_changes_when_a_frame_is_added(clips, tmp_path):
    folder = tmp_path / "frames"
    shutil.copytree(clips.frames_dir, folder)
    key = cache.cache_key(Source(folder, frames_dir=True), FC)
    assert cache.cache_key(Source(folder, frames_dir=True), FC) == key
    shutil.copy(folder / "frame_000.png", folder / "frame_999.png")
    assert cache.cache_key(Source(folder, frames_dir=True), FC) != key


def test_unreadable_video_leaves_nothing_in_the_cache(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    cache_dir = tmp_path / "cache"
    with pytest.raises(VideoError):
        cache.extract(cache_dir, Source(fake), FC, "default")
    assert list(cache_dir.iterdir()) == []


def test_variable_frame_rate_clip_keeps_its_timestamps_in_the_cache(tmp_path):
    video = write_vfr(tmp_path / "vfr.mkv", VFR_PTS_MS)
    fc = FrameConfig(width=32, height=24, channels=1, stride=2)
    meta, _ = cache.extract(tmp_path / "cache", Source(video), fc, "default")
    times = cache.load_times(tmp_path / "cache", meta)
    assert times.dtype == np.float64 and meta.frames == len(times) == len(VFR_PTS_MS[::2])
    np.testing.assert_allclose(times, np.array(VFR_PTS_MS[::2]) / 1000, atol=1e-9)  # not index · stride / fps
    assert meta.duration == pytest.approx(VFR_PTS_MS[-1] / 1000 + 0.04)  # the last frame's time and length
    assert cache.find(tmp_path / "cache", meta.key) == meta


def test_a_cache_written_before_times_were_kept_still_loads(clips, tmp_path):
    fc = FrameConfig(width=32, height=24, channels=1, stride=2)
    meta, _ = cache.extract(tmp_path, Source(clips.normal_a), fc, "default")
    # what the previous version left: no times file, no duration in the JSON
    (tmp_path / f"{meta.key}.t").unlink()
    stored = json.loads((tmp_path / f"{meta.key}.json").read_text())
    del stored["duration"]
    (tmp_path / f"{meta.key}.json").write_text(json.dumps(stored))
    old = cache.find(tmp_path, meta.key)
    assert old is not None and old.duration is None and old.frames == meta.frames
    assert [m.key for m in cache.clips(tmp_path, fc)] == [meta.key]
    assert cache.load(tmp_path, old).shape[0] == meta.frames
    np.testing.assert_allclose(cache.load_times(tmp_path, old), np.arange(meta.frames) * 2 / 25.0)
    again, new = cache.extract(tmp_path, Source(clips.normal_a), fc, "default")
    assert not new and again == old  # not decoded again


def test_two_first_extracts_at_once_agree_on_the_frame_size(clips, tmp_path):
    """frames.width 0 is set by the first clip extracted; a second extract that began before it was set
    (it read width 0 too) takes that width rather than writing its own, so that neither cache is lost."""
    root = make_project(tmp_path / "p", tiny_config(frames={"width": 0}))
    frames, _ = square_frames(24, 4, 20, 1.0, 8)
    wide = write_video(tmp_path / "wide.mp4", np.concatenate([frames, frames], 2))  # 128×48, not 64×48
    first, second = Project.open(root), Project.open(root)  # two commands, both before either extracted
    extract(first, [clips.normal_a])
    extract(second, [wide])
    on_disk = Project.open(root).config.frames
    assert on_disk.width == first.config.frames.width == second.config.frames.width == 40  # 64×48 at 32 rows
    assert [m.name for m in cache.clips(root / "cache", on_disk)] == ["normal_a.mp4", "wide.mp4"]
