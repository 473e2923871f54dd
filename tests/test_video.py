"""Reading clips with PyAV: expanding paths, frame size/channels/stride, frame folders, broken files."""

from __future__ import annotations

import shutil
from fractions import Fraction

import numpy as np
import pytest
from conftest import VFR_PTS_MS, background, square_frames, write_vfr, write_video

from vidanom.config import FrameConfig
from vidanom.errors import VideoError
from vidanom.video import DEFAULT_FPS, DecodeReport, Source, _Clock, find_sources, iter_chunks, iter_timed_chunks


def decode(src: Source, fc: FrameConfig, size: int = 10, report: DecodeReport | None = None) -> list[np.ndarray]:
    return list(iter_chunks(src, fc, size, report))


# -- find_sources ----------------------------------------------------------------------------------


def test_find_sources_expands_files_frame_folders_and_video_folders(clips):
    got = find_sources([clips.anomalous, clips.frames_dir, clips.folder])
    assert got == [
        Source(clips.anomalous),
        Source(clips.frames_dir, frames_dir=True),
        Source(clips.normal_a),
        Source(clips.normal_b),
    ]
    assert got[1].name == "pngs"


def test_find_sources_ignores_other_files_in_a_video_folder(clips, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(clips.normal_b, folder / "b.MP4")  # suffixes are matched case-insensitively
    shutil.copy(clips.normal_a, folder / "a.mkv")
    (folder / "notes.txt").write_text("not a video")
    (folder / "sub.mp4").mkdir()  # a folder with a video's name is not a video
    assert find_sources([folder]) == [Source(folder / "a.mkv"), Source(folder / "b.MP4")]


def test_find_sources_missing_path(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        find_sources([tmp_path / "nope.mp4"])


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_find_sources_folder_without_clips(tmp_path, content):
    if content:
        (tmp_path / content).write_text("hello")
    with pytest.raises(VideoError, match="no videos or image frames"):
        find_sources([tmp_path])


# -- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_decoding_gives_frames_of_the_configured_size_and_channels(clips, channels):
    fc = FrameConfig(width=32, height=24, channels=channels)
    report = DecodeReport()
    chunks = decode(Source(clips.normal_a), fc, size=20, report=report)
    assert [len(c) for c in chunks] == [20, 20, 20, 20, clips.normal_frames - 80]
    assert all(c.shape[1:] == (24, 32, channels) and c.dtype == np.uint8 for c in chunks)
    assert report.frames == clips.normal_frames and report.fps == pytest.approx(25.0) and report.error is None


def test_gray_frames_keep_the_brightness_of_the_source(clips):
    (first, *_) = decode(Source(clips.normal_a), FrameConfig(width=64, height=48, channels=1), size=1)
    src, _ = square_frames(1, 4, 20, 1.0, 8)
    luma = src[0].astype(float) @ [0.299, 0.587, 0.114]  # the gray of a gray background is itself
    assert np.abs(first[0, ..., 0].astype(float) - luma).mean() < 3.0


def test_rgb_frames_keep_colour_in_channel_order(clips):
    fc = FrameConfig(width=64, height=48, channels=3)
    frame = decode(Source(clips.moving), fc, size=1)[0][0].astype(int)
    x, y = clips.moving_centres[0]
    r, g, b = frame[int(y), int(x)]
    assert r > 180 and g < 80 and b < 80  # the square is red, not blue (rgb24, not bgr24)


@pytest.mark.parametrize("stride", [2, 3])
def test_stride_keeps_every_stride_th_frame_from_the_first(clips, stride):
    fc = FrameConfig(width=64, height=48, channels=3, stride=stride)
    report = DecodeReport()
    frames = np.concatenate(decode(Source(clips.moving), fc, size=7, report=report))
    expected = clips.moving_centres[::stride]
    assert len(frames) == report.frames == len(expected) == -(-clips.n_frames // stride)
    for f, (cx, cy) in zip(frames.astype(int), expected):
        red = (f[..., 0] > 150) & (f[..., 1] < 100)
        ys, xs = np.nonzero(red)
        assert abs(xs.mean() - cx) < 1.0 and abs(ys.mean() - cy) < 1.0  # the square moves 3 px per frame


def test_frame_folder_is_one_clip_in_name_order_with_stride(clips):
    fc = FrameConfig(width=64, height=48, channels=1, stride=2)
    report = DecodeReport()
    frames = np.concatenate(decode(Source(clips.frames_dir, frames_dir=True), fc, size=4, report=report))
    assert frames.shape == (-(-clips.n_png // 2), 48, 64, 1)
    assert report.fps == DEFAULT_FPS
    src, _ = square_frames(clips.n_png, 10, 10, 2.0, 8)
    luma = src[::2].astype(float) @ [0.299, 0.587, 0.114]
    assert np.abs(frames[..., 0] - luma).max() < 3.0  # PNG is lossless: frames 0, 2, 4... in order


def test_unreadable_image_in_a_frame_folder_is_skipped(clips, tmp_path):
    folder = tmp_path / "frames"
    shutil.copytree(clips.frames_dir, folder)
    (folder / "frame_005.png").write_text("not a png")
    (folder / "readme.txt").write_text("ignored: not an image")
    report = DecodeReport()
    frames = np.concatenate(decode(Source(folder, frames_dir=True), FrameConfig(32, 32, 1), report=report))
    assert len(frames) == report.frames == clips.n_png - 1
    assert len(report.skipped) == 1 and report.skipped[0].startswith("frame_005.png")


def test_text_file_named_mp4_is_a_video_error(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="fake.mp4"):
        decode(Source(fake), FrameConfig())


def test_empty_file_is_a_video_error(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError):
        decode(Source(tmp_path / "empty.mp4"), FrameConfig())


def test_folder_of_only_unreadable_images_is_a_video_error(tmp_path):
    (tmp_path / "a.png").write_text("x")
    (tmp_path / "b.png").write_text("y")
    with pytest.raises(VideoError, match="no frames could be decoded"):
        decode(Source(tmp_path, frames_dir=True), FrameConfig())


def test_truncated_video_keeps_the_frames_that_decoded(tmp_path):
    # an MPEG transport stream has no index, so a file cut in half still opens and decodes its first part
    frames, _ = square_frames(40, 4, 20, 1.0, 8)
    full = write_video(tmp_path / "full.ts", frames)
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2])
    report = DecodeReport()
    got = np.concatenate(decode(Source(cut), FrameConfig(64, 48, 1), report=report))
    assert 0 < len(got) < 40 and report.frames == len(got)
    np.testing.assert_array_less(np.abs(got[0, ..., 0].astype(float) - background()[..., 0]).mean(), 10.0)


def test_a_bug_while_converting_frames_is_raised_not_taken_for_a_damaged_file(clips, monkeypatch):
    from vidanom import video

    def broken(self, frame):
        raise TypeError("a bug in vidanom")

    monkeypatch.setattr(video._Scaler, "__call__", broken)
    with pytest.raises(TypeError, match="a bug in vidanom"):  # not "the file ends early" with a warning
        decode(Source(clips.normal_a), FrameConfig(32, 24, 1))


# -- frame times -----------------------------------------------------------------------------------


def timed(
    src: Source, fc: FrameConfig, size: int = 3, report: DecodeReport | None = None
) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(iter_timed_chunks(src, fc, size, report))
    assert all(len(f) == len(t) and t.dtype == np.float64 for f, t in chunks)
    return np.concatenate([f for f, _ in chunks]), np.concatenate([t for _, t in chunks])


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_times_of_a_variable_frame_rate_file_are_its_timestamps(tmp_path, suffix):
    video = write_vfr(tmp_path / f"vfr{suffix}", VFR_PTS_MS)
    report = DecodeReport()
    frames, times = timed(Source(video), FrameConfig(64, 48, 3), report=report)
    assert len(frames) == report.frames == len(VFR_PTS_MS) and report.error is None
    np.testing.assert_allclose(times, np.array(VFR_PTS_MS) / 1000, atol=1e-9)  # not index / fps
    assert report.duration == pytest.approx(VFR_PTS_MS[-1] / 1000 + 0.04, abs=1e-3)  # + the last frame's length
    # the frames are those of the times: the square moves 3 px per frame written
    xs = [np.nonzero((f[..., 0] > 150).any(0))[0].mean() for f in frames]
    np.testing.assert_allclose(np.diff(xs), 3.0, atol=0.6)


def test_stride_keeps_every_stride_th_frame_with_its_time(tmp_path):
    video = write_vfr(tmp_path / "vfr.mkv", VFR_PTS_MS)
    _, times = timed(Source(video), FrameConfig(32, 32, 1, stride=3))
    np.testing.assert_allclose(times, np.array(VFR_PTS_MS[::3]) / 1000, atol=1e-9)


def test_an_avi_with_dropped_frame_slots_keeps_true_times_and_is_not_short(tmp_path):
    # an IP camera's AVI: 30 slots a second, most of them empty (the muxer writes empty chunks)
    slots = [0, 7, 14, 21, 30, 37, 60, 89]
    video = write_vfr(tmp_path / "cam.avi", slots, Fraction(1, 30), rate=30)
    report = DecodeReport()
    _, times = timed(Source(video), FrameConfig(32, 32, 1), report=report)
    np.testing.assert_allclose(times, np.array(slots) / 30, atol=1e-9)
    assert report.fps == pytest.approx(30.0)  # the nominal rate stays what the file states
    assert report.duration == pytest.approx(3.0)
    assert report.error is None  # fewer frames than slots is not a file that ends early


def test_times_start_at_zero_and_a_constant_rate_file_gets_index_over_fps(tmp_path):
    video = write_vfr(tmp_path / "late.mkv", [5000 + 40 * i for i in range(10)])  # first frame at 5 s
    _, times = timed(Source(video), FrameConfig(32, 32, 1, stride=2))
    np.testing.assert_allclose(times, np.arange(0, 10, 2) * 0.04, atol=1e-9)


def test_frame_folder_times_are_position_over_fps(clips, tmp_path):
    folder = tmp_path / "frames"
    shutil.copytree(clips.frames_dir, folder)
    (folder / "frame_004.png").write_text("not a png")  # an unreadable image keeps its slot
    report = DecodeReport()
    frames, times = timed(Source(folder, frames_dir=True), FrameConfig(32, 32, 1, stride=2), report=report)
    kept = [i for i in range(0, clips.n_png, 2) if i != 4]
    assert len(frames) == len(kept)
    np.testing.assert_allclose(times, np.array(kept) / DEFAULT_FPS)
    assert report.duration == pytest.approx(clips.n_png / DEFAULT_FPS)


def test_clock_keeps_times_non_decreasing_and_fills_missing_timestamps():
    clock = _Clock(10.0)
    got = [clock(p, i) for i, p in enumerate([2.0, None, 2.5, 2.45, None, 0.1, 0.2])]
    # no PTS: one nominal period on; a little back: held; far back (a restart): a new timeline
    np.testing.assert_allclose(got, [0.0, 0.1, 0.5, 0.5, 0.6, 0.7, 0.8])
    assert all(b >= a for a, b in zip(got, got[1:]))
    assert [_Clock(25.0)(None, 0)] == [0.0]


def test_live_clock_falls_back_to_arrival_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("vidanom.video.time.monotonic", lambda: now[0])
    clock, got = _Clock(25.0, live=True), []
    for arrival, pts in [(100.0, 7.0), (100.5, 7.04), (101.0, None), (103.0, 2.0), (103.1, 2.04)]:
        now[0] = arrival
        got.append(clock(pts, len(got)))
    # PTS while they come (0.04 s apart though 0.5 s in arrival); none: arrival; a step back: arrival, then PTS
    np.testing.assert_allclose(got, [0.0, 0.04, 0.54, 2.54, 2.58])
