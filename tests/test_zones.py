"""Zones to ignore: polygons in the camera's pixels (vidanom.json), what they do to scores (an anomaly
inside one is not flagged, the same outside is), to training, what draws them, and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HEIGHT, WIDTH, Clips, background, invoke, make_project, private_copy, square_frames, write_video
from test_accept import snapshot
from test_annotate import decode_rgb
from test_cli import assert_clean_error

from vidanom import fitting, gallery, training, zones
from vidanom.config import MaskConfig
from vidanom.project import Project
from vidanom.revisit import scored_clip
from vidanom.store import ScoreStore
from vidanom.vae import vae_loss

CPU = ("--device", "cpu")
CORNER = (2, 16, 2, 20)  # rows, columns (top, bottom, left, right) where the made anomaly jitters
TOP_LEFT = ("0,0", "24,0", "24,18", "0,18")  # a zone a little larger than the corner, in the clip's 64x48 pixels
BOTTOM_RIGHT = ("40,30", "64,30", "64,48", "40,48")  # as large, where nothing unusual happens
ANOMALY = (20, 36)


def corner_frames() -> np.ndarray:
    """Normal frames (a small square moving slowly) in which a bright square jitters fast in the top-left
    corner for frames ANOMALY, far from where anything moves in the normal clips."""
    frames, _ = square_frames(48, 4, 20, 1.0, 8)
    top, bottom, left, right = CORNER
    rng = np.random.default_rng(0)
    for i in range(*ANOMALY):
        y, x = rng.integers(top, bottom - 8), rng.integers(left, right - 8)
        frames[i, y : y + 8, x : x + 8] = 250
    return frames


@pytest.fixture(scope="module")
def corner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("corner") / "corner.mp4", corner_frames())


def flagged(root: Path, video: Path) -> np.ndarray:
    res = invoke("score", video, *CPU, "-p", root)
    assert res.exit_code == 0, res.output
    return ScoreStore(root / "scores").read(video.name).flags


# -- what they do ------------------------------------------------------------------------------------------


def test_an_anomaly_inside_a_zone_is_not_flagged_and_the_same_outside_one_is(
    trained_project_template, corner, tmp_path
):
    plain = private_copy(trained_project_template, tmp_path / "plain")
    assert flagged(plain, corner)[slice(*ANOMALY)].sum() >= 4  # seen without a zone
    for name, zone in (("inside", TOP_LEFT), ("outside", BOTTOM_RIGHT)):
        root = private_copy(trained_project_template, tmp_path / name)
        assert invoke("mask", "add", *zone, "-p", root).exit_code == 0
        res = invoke("train", "--stage", "calibrate", *CPU, "-p", root)  # the threshold, for the zones
        assert res.exit_code == 0, res.output
        flags = flagged(root, corner)
        if name == "inside":
            assert not flags.any(), np.flatnonzero(flags)
        else:
            assert flags[slice(*ANOMALY)].sum() >= 4


def test_zones_weigh_the_error_map_and_the_cells_at_the_models_size():
    # drawn on a 64x48 camera; the model sees 32x32 with cells of 8 pixels square
    mask = MaskConfig(64, 48, (((0.0, 0.0), (18.0, 0.0), (18.0, 48.0), (0.0, 48.0)),))
    z = zones.Zones.of(mask, 32, 32, 8)
    assert z is not None and z.pixels.shape == (32, 32) and z.cells.shape == (16,)
    assert (z.pixels[:, :9] == 0).all() and (z.pixels[:, 10:] == 1).all()  # 18 of 64 columns: 9 of 32
    assert z.pixels[:, 9].float().mean() == pytest.approx(1.0, abs=0.07)
    cells = z.cells.view(4, 4)
    assert (cells[:, 0] == 0).all() and cells[:, 1].tolist() == pytest.approx([7 / 8] * 4, abs=0.02)
    assert (cells[:, 2:] == 1).all()
    scores = torch.tensor([[5.0, 5.0, -3.0, 2.0]])  # z-scores of four cells of one frame
    z4 = zones.Zones(torch.ones(8, 8), torch.tensor([0.0, 0.5, 0.0, 1.0]))
    assert z4.places(scores).tolist() == [[0.0, 2.5, -3.0, 2.0]]  # above normal: by the share outside
    assert zones.Zones.of(MaskConfig(), 32, 32, 8) is None
    # the flow's windows: a pixel counts by the least share outside within the window around it
    window = z.windows(5)
    assert (window[:, :11] == 0).all() and (window[:, 12:] == 1).all()  # 2 more columns of 32 than the zone
    torch.testing.assert_close(window[:, 11], z.pixels[:, 9])


def test_set_before_training_the_zones_weigh_the_training_loss(project, clips, monkeypatch):
    assert invoke("mask", "add", *TOP_LEFT, "--size", f"{WIDTH}x{HEIGHT}", "-p", project).exit_code == 0
    weights = []

    def spy(*args):
        if len(args) > 5:  # an optimiser step's (the held-out loss is measured on whole frames)
            weights.append(args[5])
        return vae_loss(*args)

    monkeypatch.setattr(fitting, "vae_loss", spy)
    training.train(Project.open(project), [clips.folder], device=torch.device("cpu"))
    assert weights and all(w is not None for w in weights)
    assert weights[0][:8, :10].max() == 0 and weights[0][12:, 14:].min() == 1  # the corner costs nothing
    x, recon = torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32)
    recon[..., :8, :10] = 1.0  # wrong only inside the zone
    mu, logvar = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    assert vae_loss(x, recon, mu, logvar, 0.1, weights[0])[1] == 0
    assert vae_loss(x, recon, mu, logvar, 0.1)[1] == 2 * 8 * 10


# -- drawing -------------------------------------------------------------------------------------------------


def test_zones_are_drawn_scaled_to_the_frame():
    frame = np.full((96, 128, 3), 100, np.uint8)  # twice the size they were drawn on
    mask = MaskConfig(64, 48, (((0.0, 0.0), (24.0, 0.0), (24.0, 18.0), (0.0, 18.0)),))
    out = zones.draw(frame, mask)
    assert np.abs(out[5:30, 5:40].astype(int) - 100).min() > 10  # tinted inside
    assert (out[45:, 60:] == 100).all() and (frame == 100).all()  # untouched outside, and a copy
    assert zones.draw(frame, MaskConfig()) is frame


def test_gallery_annotated_video_and_report_draw_the_zones(scored, clips, tmp_path):
    assert invoke("mask", "add", *BOTTOM_RIGHT, "-p", scored).exit_code == 0
    project = Project.open(scored)
    clip = scored_clip(project, clips.anomalous)
    (panel,) = gallery.collect(project, clip, [30])
    raw = background()
    inside, outside = (slice(34, 46), slice(44, 62)), (slice(0, 4), slice(0, 64))
    assert np.abs(panel.original[inside].astype(int) - raw[inside]).mean() > 15
    assert np.abs(panel.original[outside].astype(int) - raw[outside]).mean() < 6
    out = tmp_path / "annotated.mp4"
    assert invoke("annotate", clips.anomalous, "-o", out, *CPU, "-p", scored).exit_code == 0
    frames, _, _ = decode_rgb(out)
    assert np.abs(frames[5][inside].astype(int) - raw[inside]).mean() > 15
    # the report's images are made anew when the zones change
    report = tmp_path / "report"
    assert invoke("report", "-o", report, "-p", scored).exit_code == 0
    before = set((report / "assets" / "thumbs").iterdir())
    assert invoke("mask", "clear", "-p", scored).exit_code == 0
    assert invoke("report", "-o", report, "-p", scored).exit_code == 0
    assert before and set((report / "assets" / "thumbs").iterdir()).isdisjoint(before)


# -- the commands, and bad input -----------------------------------------------------------------------------


def test_mask_add_list_and_clear(trained_project):
    res = invoke("mask", "add", *TOP_LEFT, "-p", trained_project)  # the size: from the project's clips
    assert res.exit_code == 0 and "1 zone(s) to ignore on the camera's 64x48 frame" in res.output
    assert invoke("mask", "add", "30,30", "40,30", "35,40", "--size", "64x48", "-p", trained_project).exit_code == 0
    saved = json.loads((trained_project / "vidanom.json").read_text())["score"]["mask"]
    polygons = [[[0, 0], [24, 0], [24, 18], [0, 18]], [[30, 30], [40, 30], [35, 40]]]
    assert saved == {"width": 64, "height": 48, "polygons": polygons}
    listed = invoke("mask", "list", "-p", trained_project).output
    assert "1: 0,0 24,0 24,18 0,18" in listed and "2: 30,30 40,30 35,40" in listed
    status = " ".join(invoke("status", "-p", trained_project).output.split())  # the threshold was set without them
    assert "score.mask.polygons is [[[0, 0]" in status and "'vidanom train --stage calibrate' sets one" in status
    assert "removed 2 zone(s)" in invoke("mask", "clear", "-p", trained_project).output
    assert "no zones to ignore" in invoke("mask", "list", "-p", trained_project).output


BAD = {
    "two points": (("0,0", "10,0"), "at least 3 points"),
    "outside the frame": (("0,0", "70,0", "70,10"), "70,0 lies outside the camera's 64x48 frame"),
    "below zero": (("0,0", "10,0", "5,-1"), "5,-1 lies outside"),
    "not a point": (("0,0", "10,0", "ten,10"), "not 'ten,10'"),
    "another size": (("0,0", "10,0", "5,5", "--size", "1280x720"), "drawn on a 64x48 frame"),
    "a bad size": (("0,0", "10,0", "5,5", "--size", "big"), "WIDTHxHEIGHT"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_zones_are_one_line_exit_2_and_change_nothing(trained_project, case):
    assert invoke("mask", "add", "40,30", "64,30", "64,48", "-p", trained_project).exit_code == 0
    args, message = BAD[case]
    before = snapshot(trained_project)
    assert_clean_error(invoke("mask", "add", *args, "-p", trained_project), 2, message)
    assert snapshot(trained_project) == before


def test_a_zone_needs_the_cameras_size_where_the_project_has_no_clip(project):
    before = snapshot(project)
    assert_clean_error(invoke("mask", "add", *TOP_LEFT, "-p", project), 2, "pass --size WIDTHxHEIGHT")
    assert snapshot(project) == before


def test_a_hand_edited_zone_outside_the_frame_is_a_config_error(project):
    cfg = json.loads((project / "vidanom.json").read_text())
    cfg["score"]["mask"] = {"width": 64, "height": 48, "polygons": [[[0, 0], [99, 0], [10, 10]]]}
    (project / "vidanom.json").write_text(json.dumps(cfg))
    assert_clean_error(invoke("status", "-p", project), 2, "polygon 1 has the point 99,0 outside the 64x48 frame")


def test_zones_need_a_clip_of_the_camera(clips: Clips, tmp_path):
    root = make_project(tmp_path / "p")
    assert invoke("extract", clips.normal_a, "-p", root).exit_code == 0
    assert invoke("mask", "add", *TOP_LEFT, "-p", root).exit_code == 0  # its size from the cached clip
    assert Project.open(root).config.score.mask.width == WIDTH
