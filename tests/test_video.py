"""Reading clips with PyAV: expanding paths, frame size/channels/stride, frame folders, broken files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import background, square_frames, write_video

from vidanom.config import FrameConfig
from vidanom.errors import VideoError
from vidanom.video import DEFAULT_FPS, DecodeReport, Source, find_sources, iter_chunks


def decode(src: Source, fc: FrameConfig, size: int = 10, report: DecodeReport | None = None) -> list[np.ndarray]:
    return list(iter_chunks(src, fc, size, report))


# -- find_sources ----------------------------------------------------------------------------------

def test_find_sources_expands_files_frame_folders_and_video_folders(clips):
    got = find_sources([clips.anomalous, clips.frames_dir, clips.folder])
    assert got == [Source(clips.anomalous), Source(clips.frames_dir, frames_dir=True),
                   Source(clips.normal_a), Source(clips.normal_b)]
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
    assert [len(c) for c in chunks] == [20, 20, clips.n_frames - 40]
    assert all(c.shape[1:] == (24, 32, channels) and c.dtype == np.uint8 for c in chunks)
    assert report.frames == clips.n_frames and report.fps == pytest.approx(25.0) and report.error is None


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
