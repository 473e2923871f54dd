"""Seeing what was found: the annotated video, the gallery of the most anomalous frames, the timeline plot."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import Clips, invoke, tiny_config
from PIL import Image

from vidanom import annotate, gallery, heatmap, plot
from vidanom.project import Project
from vidanom.revisit import scored_clip
from vidanom.normality import Calibration

CPU = ("--device", "cpu")


def decode_rgb(path: Path) -> tuple[np.ndarray, av.VideoStream, float]:
    """Every frame of a video as (n, H, W, 3) uint8, its stream's rate and codec name."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        return frames, stream.codec_context.name, float(stream.average_rate)


def stored_flags(root: Path, clip: str = "anom.mp4") -> tuple[np.ndarray, np.ndarray]:
    with open(root / "scores" / f"{clip}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["score"]) for r in rows]), np.array([r["anomalous"] == "1" for r in rows])


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, trained_project_template: Path, clips: Clips) -> tuple[Path, Path]:
    """The trained project with the anomalous clip scored and annotated in one command (read-only)."""
    root = tmp_path_factory.mktemp("annotated") / "proj"
    shutil.copytree(trained_project_template, root)
    out = root.parent / "out" / "anom_annotated.mp4"  # a folder that does not exist yet
    res = invoke("score", clips.anomalous, "--annotate", out, *CPU, "-p", root)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stdout.replace("\n", "")
    return root, out


# -- annotated video ---------------------------------------------------------------------------------


def test_annotated_video_has_the_frames_rate_and_size_of_the_input(annotated, clips):
    _, out = annotated
    src, _, src_rate = decode_rgb(clips.anomalous)
    got, codec, rate = decode_rgb(out)
    assert got.shape == src.shape == (clips.n_frames, 48, 64, 3)
    assert rate == src_rate == 25.0 and codec == "h264"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it


def test_heatmap_is_drawn_on_flagged_frames_only(annotated, clips):
    root, out = annotated
    src, got = decode_rgb(clips.anomalous)[0].astype(int), decode_rgb(out)[0].astype(int)
    _, flags = stored_flags(root)
    assert 0 < flags.sum() < len(flags)
    strip, border = max(8, round(48 * annotate.STRIP_SHARE)), 2
    # the picture above the score strip, inside the red border that marks flagged frames
    diff = np.abs(got - src)[:, border : -strip - border, border:-border].sum(-1)  # (n, h, w)
    normal, flagged = diff[~flags], diff[flags]
    assert normal.mean() < 6 and np.percentile(normal, 99) < 40  # only the encoder's loss
    hot = (flagged > 90).reshape(len(flagged), -1).sum(1)  # pixels recoloured by the heatmap, per frame
    assert (hot > 0).mean() > 0.8, hot
    assert hot.mean() > 10 * max(1, (normal > 90).reshape(len(normal), -1).sum(1).mean())
    # flagged frames also get a red border, normal ones keep the input's edge
    edge = got[:, :border, 8:-8].mean((1, 2))
    assert (edge[flags][:, 0] > 150).all() and (edge[flags][:, 1] < 90).all()
    assert np.abs(got[~flags, :border, 8:-8] - src[~flags, :border, 8:-8]).mean() < 8


def test_the_strip_cursor_follows_the_frame(annotated, clips):
    _, out = annotated
    got = decode_rgb(out)[0].astype(int)
    strip = max(8, round(48 * annotate.STRIP_SHARE))
    bright = got[:, -strip + 1 : -1].min(-1).mean(1)  # (n, W): white pixels over the whole strip height
    cursor = bright.argmax(1)
    expected = ((np.arange(clips.n_frames) + 0.5) * 64 / clips.n_frames).astype(int)
    assert np.abs(cursor - expected).max() <= 2


def test_score_strip_keeps_a_one_frame_spike_of_a_long_clip_visible():
    # 20000 frames on 200 pixels: every column shows the range of its 100 frames, so a spike of one
    # frame still reaches above the threshold in its column, and nowhere else does
    scores = np.random.default_rng(0).normal(0, 0.3, 20000)
    scores[12345] = 6.0
    strip = annotate.ScoreStrip(scores, 2.0, [(12345, 12346)], 200, 40)
    painted = strip.draw(np.zeros((40, 200, 3), np.uint8), 0)
    high = (painted == annotate.HIGH).all(-1).any(0)
    assert np.flatnonzero(high).tolist() == [int(12345.5 * 200 / 20000)]
    lo, hi = annotate._envelope(scores, 200, strip.columns)
    for c in (0, 61, 123, 199):  # each column covers the min and max of its frames
        inside = scores[strip.columns == c]
        assert lo[c] <= inside.min() and hi[c] >= inside.max()


def test_a_short_clip_draws_a_connected_line():
    scores = np.array([0.0, 4.0, 1.0])
    strip = annotate.ScoreStrip(scores, 2.0, [], 90, 30)
    lo, hi = annotate._envelope(scores, 90, strip.columns)
    assert np.all(lo[1:] <= hi[:-1]) and np.all(hi[1:] >= lo[:-1])  # neighbouring columns touch


def test_an_interrupted_annotate_leaves_no_file(annotated, clips, tmp_path):
    root, _ = annotated
    out = tmp_path / "half.mp4"

    def interrupt(task, done, total, info):
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        annotate.annotate(Project.open(root), clips.anomalous, out, torch.device("cpu"), interrupt)
    assert list(tmp_path.iterdir()) == []


def test_an_odd_sized_clip_is_padded_to_even(trained_project, tmp_path):
    frames = tmp_path / "odd"
    frames.mkdir()
    for i in range(6):
        Image.fromarray(np.full((49, 65, 3), 40 * i, np.uint8)).save(frames / f"{i:02d}.png")
    out = tmp_path / "odd.mkv"
    res = invoke("score", frames, "--annotate", out, *CPU, "-p", trained_project)
    assert res.exit_code == 0, res.output
    assert "padded" in res.stderr and "66x50" in res.stderr
    got, _, rate = decode_rgb(out)
    assert got.shape == (6, 50, 66, 3) and rate == 25.0


def test_annotate_errors_are_clean(annotated, trained_project, clips, tmp_path):
    root, _ = annotated
    res = invoke("annotate", clips.normal_a, "-o", tmp_path / "x.mp4", "-p", root)  # never scored
    assert res.exit_code == 2 and "no stored scores" in res.stderr and "Traceback" not in res.output
    res = invoke("annotate", clips.anomalous, "-o", tmp_path / "x.gif", "-p", root)
    assert res.exit_code == 2 and "name it .mp4" in res.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = invoke("score", clips.anomalous, "--annotate", blocker / "x.mp4", "-p", trained_project)
    assert res.exit_code == 2 and "cannot write" in res.stderr
    assert not (trained_project / "scores" / "anom.mp4.csv").exists()  # refused before scoring
    res = invoke("score", clips.anomalous, clips.normal_a, "--annotate", tmp_path / "x.mp4", "-p", trained_project)
    assert res.exit_code == 2 and "one clip" in res.stderr
    res = invoke("annotate", tmp_path / "missing.mp4", "-p", root)
    assert res.exit_code == 2 and "no such file" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "trained"]  # nothing written


def test_annotate_command_writes_into_the_scores_folder_by_default(annotated, clips, tmp_path):
    root = shutil.copytree(annotated[0], tmp_path / "proj")
    res = invoke("annotate", clips.anomalous, *CPU, "-p", root)
    assert res.exit_code == 0, res.output
    got, _, _ = decode_rgb(root / "scores" / "anom.mp4.annotated.mp4")
    assert len(got) == clips.n_frames


# -- gallery -----------------------------------------------------------------------------------------


def test_pick_frames_takes_the_highest_scores_a_gap_apart():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=500)
    assert gallery.pick_frames(scores, 5, 0) == np.argsort(-scores)[:5].tolist()
    picks = gallery.pick_frames(scores, 8, 20)
    assert len(picks) == 8 and picks[0] == int(np.argmax(scores))
    assert all(abs(a - b) >= 20 for i, a in enumerate(picks) for b in picks[:i])
    # greedy: any frame scoring above the last pick lies within the gap of a higher pick
    for f in np.flatnonzero(scores > scores[picks[-1]]):
        assert any(abs(f - p) < 20 and scores[p] >= scores[f] for p in picks)
    with_nan = np.array([np.nan, 1.0, np.nan, 0.5])
    assert gallery.pick_frames(with_nan, 5, 1) == [1, 3]
    assert gallery.pick_frames(np.arange(10.0), 5, 4) == [9, 5, 1]  # no more frames that far apart


def test_gallery_shows_the_top_frames(annotated, clips, tmp_path):
    root, _ = annotated
    scores, _ = stored_flags(root)
    sizes = {}
    for k in (1, 3):
        out = tmp_path / f"g{k}.png"
        res = invoke("gallery", clips.anomalous, "-k", k, "--min-gap", "0.2", "-o", out, *CPU, "-p", root)
        assert res.exit_code == 0, res.output
        expected = gallery.pick_frames(scores, k, 5)  # 0.2 s at 25 fps
        assert [int(f) for f in re.findall(r"frame (\d+) at", res.stdout)] == expected
        sizes[k] = Image.open(out).size
    assert sizes[1][0] == sizes[3][0] and sizes[3][1] > 2 * sizes[1][1]  # one row per frame
    # a scored clip can be named rather than found again: its summary knows the file
    res = invoke("gallery", "anom.mp4", "-k", 1, "--min-gap", "0.2", "-o", tmp_path / "byname.png", *CPU, "-p", root)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "byname.png").read_bytes() == (tmp_path / "g1.png").read_bytes()
    res = invoke("gallery", "never_scored.mp4", "-p", root)
    assert res.exit_code == 2 and "never_scored.mp4" in res.stderr


def test_gallery_panels_are_the_chosen_frames(annotated, clips):
    root, _ = annotated
    project = Project.open(root)
    clip = scored_clip(project, clips.anomalous)
    frames = gallery.pick_frames(clip.scores, 3, 5)
    panels = gallery.collect(project, clip, frames, torch.device("cpu"))
    src = decode_rgb(clips.anomalous)[0]
    assert [p.frame for p in panels] == frames
    for p in panels:
        np.testing.assert_array_equal(p.original, src[p.frame])
        assert p.reconstruction.shape == p.heatmap.shape == src[p.frame].shape
        assert p.score == pytest.approx(clip.scores[p.frame]) and p.time == pytest.approx(p.frame / 25)
    assert any(np.abs(p.heatmap.astype(int) - p.original).max() > 90 for p in panels)  # the error shows


def test_gallery_errors_are_clean(annotated, clips, tmp_path):
    root, _ = annotated
    for args, message in (
        (("-k", "0"), "-k must be between"),
        (("--min-gap", "-1"), "--min-gap"),
        (("-o", tmp_path / "g.jpg"), "PNG"),
    ):
        res = invoke("gallery", clips.anomalous, *args, "-p", root)
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output, res.output
    res = invoke("gallery", clips.normal_a, "-p", root)
    assert res.exit_code == 2 and "no stored scores" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_gallery_refuses_scores_of_another_model(annotated, clips, tmp_path):
    root = shutil.copytree(annotated[0], tmp_path / "proj")
    summary = root / "scores" / "anom.mp4.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "model_version": "v0000"}))
    res = invoke("gallery", clips.anomalous, "-p", root)
    assert res.exit_code == 2 and "score it again" in res.stderr


# -- timeline plot -----------------------------------------------------------------------------------


def test_timeline_bins_cover_every_frame(tmp_path):
    scores = np.random.default_rng(2).normal(size=15000)
    starts, lo, hi, mean = plot._bins(scores, 850)
    ends = np.append(starts[1:], len(scores))
    for a, b, mn, mx, me in list(zip(starts, ends, lo, hi, mean))[::97]:
        assert (mn, mx) == (scores[a:b].min(), scores[a:b].max()) and me == pytest.approx(scores[a:b].mean())
    truth = np.zeros(15000, np.int8)
    truth[5000:5100] = 1
    times = np.arange(len(scores)) * 0.04
    path = plot.timeline(tmp_path / "long.png", scores, 2.0, times, [(5000, 5090)], truth, "long")
    assert Image.open(path).size == (1000, 390)


def test_heatmap_measures_each_place_against_its_own_normal():
    # 16×16 frames, 8×8 patches 4 apart: 3×3 positions; the top-left patch is busy in normal footage
    cfg = tiny_config(frames={"width": 16, "height": 16}, score={"patch": 8, "patch_stride": 4})
    mean, std = torch.full((1, 9), 0.01), torch.full((1, 9), 0.001)
    mean[0, 0] = 1.0
    zero = torch.zeros(1, 1)
    cal = Calibration(
        err_mean=mean,
        err_std=std,
        kl_mean=zero,
        kl_std=zero,
        nll_mean=zero,
        nll_std=zero,
        comp_mean=torch.zeros(1, 4),
        comp_std=torch.ones(1, 4),
        comp_low=torch.ones(1, 4),
        still_floor=torch.zeros(1),
        thresholds=torch.zeros(1),
        has_mdn=False,
        scenes=["default"],
    )
    scale = heatmap.ErrorScale.from_calibration(cal, cfg)
    per_patch = (mean + 3 * std)[0].view(3, 3)
    for y, x in ((0, 0), (5, 5), (15, 9)):  # every pixel: the mean over the patches covering it
        covering = [
            per_patch[r, c] for r in range(3) for c in range(3) if 4 * r <= y < 4 * r + 8 and 4 * c <= x < 4 * c + 8
        ]
        assert scale.lo[y, x] == pytest.approx(float(sum(covering) / len(covering)))
    err = torch.full((1, 16, 16), 0.2)  # the same error everywhere
    level = scale.levels(err)[0]
    assert level[1, 1] == 0 and level[12, 12] > 0.5  # ordinary where it is busy, hot where it is quiet
