"""Bad input, crashes and concurrent use, through the CLI: a clear one-line error, and nothing lost.

Cases already covered in test_cli.py / test_update.py (a missing path, a folder that is not a project,
a newer schema, score/update before train, a text file named .mp4 given to extract, labels that are not
JSON or lie outside a clip, a busy project, a dead holder's lock) are not repeated here.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import ANOMALY, Clips, anomalous_frames, invoke, make_project, square_frames, tiny_config, write_video
from PIL import Image

from vidanom import fsutil, results
from vidanom.detector import Detector
from vidanom.config import CONFIG_NAME, to_dict
from vidanom.errors import VidanomError
from vidanom.project import Project

CPU = ("--device", "cpu")


def assert_clean_error(res, exit_code: int = 2, match: str = "") -> str:
    """Non-zero exit, exactly one line on stderr starting 'error:', no traceback."""
    assert res.exit_code == exit_code, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # nothing escaped the CLI
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert match in lines[0], lines[0]
    return lines[0]


def warnings_of(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("warning: ")]


def write_with(path: Path, frames: np.ndarray, options: dict[str, str] | None = None, codec: str = "mpeg4") -> Path:
    """Like conftest.write_video, with container options (e.g. movflags=faststart: the index comes first)."""
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    return path


def write_audio(path: Path, codec: str) -> Path:
    """Half a second of a 440 Hz tone, and no video stream at all."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=44100)
        t = np.arange(22050) / 44100
        frame = av.AudioFrame.from_ndarray(
            (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate = 44100
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_empty_video(path: Path) -> Path:
    """A container with a video stream declared and not one frame in it."""
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    out.close()
    return path


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- bad input: one line, exit 2 -------------------------------------------------------------------

BAD_INPUTS = {
    "empty folder": (lambda d: d / "empty", "no videos or image frames"),
    "folder of other files": (lambda d: d / "notes", "no videos or image frames"),
    "aac audio only": (lambda d: write_audio(d / "tone.m4a", "aac"), "only audio"),
    "mp2 audio only, named .mp4": (lambda d: write_audio(d / "tone.mp4", "mp2"), "only audio"),
    "mp4 with zero frames": (lambda d: write_empty_video(d / "zero.mp4"), "no frames"),
    "avi with zero frames": (lambda d: write_empty_video(d / "zero.avi"), "no frames could be decoded"),
    "text named .mp4": (lambda d: d / "text.mp4", "cannot read"),
    "empty file": (lambda d: d / "empty.mkv", "cannot read"),
    "fifo named .mp4": (lambda d: d / "fifo.mp4", "not a regular file"),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty").mkdir()
    (d / "notes").mkdir()
    (d / "notes" / "readme.txt").write_text("no videos here")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    (d / "empty.mkv").write_bytes(b"")
    os.mkfifo(d / "fifo.mp4")  # opening it would block forever: refused before anything opens it
    return d


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error(trained_project_template, bad_inputs, case):
    make, match = BAD_INPUTS[case]
    path = make(bad_inputs)
    line = assert_clean_error(invoke("score", path, *CPU, "-p", trained_project_template), match=match)
    assert str(path) in line  # says which input is wrong...
    assert "; " in line  # ...and what to do about it
    assert not (trained_project_template / "lock").exists()
    assert not list((trained_project_template / "scores").iterdir())


def test_bad_input_to_train_and_update_leaves_the_model_alone(trained_project, bad_inputs):
    before = digest(trained_project / "models")
    assert_clean_error(
        invoke("train", bad_inputs / "text.mp4", "--steps", "8", *CPU, "-p", trained_project), match="cannot read"
    )
    assert_clean_error(
        invoke("update", write_audio(bad_inputs / "u.m4a", "aac"), "--steps", "8", *CPU, "-p", trained_project),
        match="only audio",
    )
    assert digest(trained_project / "models") == before


def test_one_frame_video_scores_with_a_warning_and_plots_and_evaluates(scored, tmp_path):
    one = write_video(tmp_path / "one.mp4", square_frames(1, 4, 20, 1.0, 8)[0])
    res = invoke("score", one, *CPU, "-p", scored)
    assert res.exit_code == 0, res.output
    (warning,) = warnings_of(res)
    assert "only 1 frame" in warning and "warm-up" in warning
    rows = (scored / "scores" / "one.mp4.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[4] == ""  # header + one frame, no MDN surprise
    summary = json.loads((scored / "scores" / "one.mp4.json").read_text())
    assert summary["frames"] == 1 and summary["segments"] == [] and "warm-up" in summary["warning"]
    assert (scored / "scores" / "one.mp4.png").read_bytes()[:4] == b"\x89PNG"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"one.mp4": [[0, 1]], "anom.mp4": [list(ANOMALY)]}))
    assert invoke("plot", "one.mp4", "--labels", labels, "-p", scored).exit_code == 0
    res = invoke("eval", labels, "--json", "-p", scored)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["frames"] == 1 + 48


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_too_little_footage_to_train_on_is_a_clean_error_saying_how_much_is_needed(trained_project, tmp_path, frames):
    short = write_video(tmp_path / "short.mp4", square_frames(frames, 4, 20, 1.0, 8)[0])
    before = digest(trained_project / "models")
    fresh = make_project(tmp_path / "fresh")
    for command, root in ((("train", short), fresh), (("update", short, "--scene", "short"), trained_project)):
        res = invoke(*command, "--steps", "4", *CPU, "-p", root)
        line = assert_clean_error(res, match=f"only {frames} frame(s) of normal footage")
        assert "at least 18 frames (0.7 s at 25 fps)" in line, line
    assert digest(trained_project / "models") == before
    long_enough = write_video(tmp_path / "enough.mp4", square_frames(18, 4, 20, 1.0, 8)[0])
    res = invoke("train", long_enough, "--steps", "4", *CPU, "-p", make_project(tmp_path / "enough"))
    assert res.exit_code == 0, res.output


def test_truncated_mp4_scores_what_decodes_or_is_a_clean_error(scored, tmp_path):
    frames = anomalous_frames()
    # the index (moov) first: the first half of the frames survive the cut
    whole = write_with(tmp_path / "whole.mp4", frames, {"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    res = invoke("score", cut, *CPU, "-p", scored)
    assert res.exit_code == 0, res.output
    summary = json.loads((scored / "scores" / "cut.mp4.json").read_text())
    (warning,) = warnings_of(res)
    assert 0 < summary["frames"] < len(frames)
    assert f"decoding stopped after {summary['frames']} frames" in warning and f"of the {len(frames)}" in warning
    assert len((scored / "scores" / "cut.mp4.csv").read_text().splitlines()) == summary["frames"] + 1
    # the index last (the default): half a file has no index, so nothing decodes
    plain = write_with(tmp_path / "plain.mp4", frames)
    cut2 = tmp_path / "cut2.mp4"
    cut2.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    assert_clean_error(invoke("score", cut2, *CPU, "-p", scored), match="cut2.mp4")


def test_frames_of_other_sizes_and_channels_are_converted(trained_project, tmp_path):
    big_rgb = np.ascontiguousarray(np.repeat(np.repeat(square_frames(12, 4, 20, 1.0, 8)[0], 2, 1), 3, 2))
    video = write_video(tmp_path / "big.mp4", big_rgb)  # 192x96 colour, the project is 32x32 gray
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate(
        [
            ((64, 48), "RGB"),
            ((100, 37), "L"),
            ((17, 90), "RGBA"),
            ((64, 48), "LA"),
            ((33, 33), "P"),
            ((200, 150), "I;16"),
        ]
    ):
        arr = rng.integers(0, 255, (size[1], size[0], len(mode) if mode in ("RGB", "RGBA", "LA") else 1))
        img = Image.fromarray(arr.astype(np.uint8).squeeze(-1) if arr.shape[-1] == 1 else arr.astype(np.uint8))
        img.convert(mode).save(mixed / f"f{i:02d}.png")
    res = invoke("score", video, mixed, *CPU, "-p", trained_project)
    assert res.exit_code == 0, res.output
    for name, n in (("big.mp4", 12), ("mixed", 6)):
        summary = json.loads((trained_project / "scores" / f"{name}.json").read_text())
        assert summary["frames"] == n and np.isfinite(summary["peak_score"])
    res = invoke("extract", mixed, "-p", trained_project)
    assert res.exit_code == 0, res.output
    (meta,) = [json.loads(p.read_text()) for p in (trained_project / "cache").glob("mixed-*.json")]
    assert (meta["frames"], meta["height"], meta["width"], meta["channels"]) == (6, 32, 32, 1)


def test_unreadable_images_in_a_folder_are_skipped_with_a_warning(trained_project, clips, tmp_path):
    folder = tmp_path / "frames"
    shutil.copytree(clips.frames_dir, folder)
    (folder / "frame_003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # a PNG header and nothing
    res = invoke("score", folder, *CPU, "-p", trained_project)
    assert res.exit_code == 0, res.output
    (warning,) = warnings_of(res)
    assert "1 unreadable image(s) skipped" in warning and "frame_003.png" in warning
    assert json.loads((trained_project / "scores" / "frames.json").read_text())["frames"] == clips.n_png - 1


# -- damaged projects --------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 97):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip", "json", "code", "wrong content"])
def test_damaged_model_file_is_a_clean_error_and_never_runs_code(trained_project, clips, tmp_path, damage):
    path = trained_project / "models" / "v0001" / "model.pt"
    marker = tmp_path / "pwned"
    if damage == "truncate":
        _truncate(path)
    elif damage == "flip":
        _flip(path)
    elif damage == "json":
        path.write_text(json.dumps({"not": "a checkpoint"}))
    elif damage == "code":
        torch.save({"format": 1, "vae": {"config": _Exploit(marker), "model": {}}}, path)
    else:
        torch.save({"format": 1, "vae": {"config": {"latent_dim": 2}, "model": {"weight": torch.zeros(3)}}}, path)
    for cmd in (("score", clips.anomalous), ("update", clips.normal_a, "--steps", "8")):
        line = assert_clean_error(invoke(*cmd, *CPU, "-p", trained_project), match="v0001")
        assert "damaged" in line and ("train again" in line or "restore" in line)
    assert not marker.exists()  # weights_only: a checkpoint is data, never code
    assert invoke("status", "-p", trained_project).exit_code == 0
    assert not (trained_project / "lock").exists()


def test_a_version_whose_model_file_is_missing_is_a_clean_error(trained_project, clips):
    (trained_project / "models" / "v0001" / "model.pt").unlink()
    assert_clean_error(invoke("score", clips.anomalous, *CPU, "-p", trained_project), match="model.pt")


def test_corrupted_config_is_a_clean_error(project):
    (project / CONFIG_NAME).write_bytes(b"\xff\xfe{ not json")
    assert_clean_error(invoke("status", "-p", project), match="cannot read config")


def test_a_config_value_out_of_range_is_a_clean_error_naming_it(trained_project, clips):
    data = json.loads((trained_project / CONFIG_NAME).read_text())
    data["score"]["batch_size"] = 0
    (trained_project / CONFIG_NAME).write_text(json.dumps(data))
    line = assert_clean_error(invoke("score", clips.anomalous, *CPU, "-p", trained_project), match="score.batch_size")
    assert "1 or more" in line and "not 0" in line
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    watch = [sys.executable, "-m", "vidanom", "watch", str(clips.anomalous), "--device", "cpu"]
    proc = subprocess.run([*watch, "-p", str(trained_project)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: score.batch_size must be"), proc.stderr


def test_stored_scores_that_do_not_match_are_a_clean_error(scored, tmp_path):
    csv = scored / "scores" / "anom.mp4.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:10]))  # a CSV from another run than the JSON
    assert_clean_error(invoke("plot", "anom.mp4", "-p", scored), match="incomplete or damaged")
    csv.write_text("frame,time,score\n0,0\n")  # a short row
    assert_clean_error(invoke("eval", tmp_path / "x.json", "-p", scored), match="cannot read labels")
    (tmp_path / "x.json").write_text(json.dumps({"anom.mp4": [[0, 1]]}))
    assert_clean_error(invoke("eval", tmp_path / "x.json", "-p", scored), match="no stored scores")


# -- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "cannot read labels"),
        (json.dumps([[0, 1]]), "must map clip names"),
        (json.dumps({"anom.mp4": [[1, 2, 3]]}), "[start, end] pairs"),
        (json.dumps({"anom.mp4": [["a", "b"]]}), "[start, end] pairs"),
        (json.dumps({"anom.mp4": 5}), "[start, end] pairs"),
        (json.dumps({"anom.mp4": [[-3, 2]]}), "outside"),
        (json.dumps({"anom.mp4": [[10, 5]]}), "outside"),
        (json.dumps({"anom.mp4": [[48, 50]]}), "outside"),
    ],
)
def test_bad_labels_for_plot_are_clean_errors(scored, tmp_path, content, match):
    labels = tmp_path / "labels.json"
    labels.write_text(content)
    assert_clean_error(invoke("plot", "anom.mp4", "--labels", labels, "-p", scored), match=match)


def test_labels_path_that_is_missing_or_a_folder(scored, tmp_path):
    assert_clean_error(invoke("eval", tmp_path / "nope.json", "-p", scored), match="cannot read labels")
    assert_clean_error(invoke("eval", tmp_path, "-p", scored), match="cannot read labels")


# -- errors the library did not foresee --------------------------------------------------------------


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(scored, clips, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("shapes do not match\nsecond line")

    monkeypatch.setattr(results, "score_clip", broken)
    line = assert_clean_error(
        invoke("score", clips.anomalous, "-p", scored), exit_code=1, match="unexpected ValueError"
    )
    assert "second line" in line and "--debug" in line
    res = invoke("--debug", "score", clips.anomalous, "-p", scored)
    assert isinstance(res.exception, ValueError)
    assert (
        "VIDANOM_DEBUG" not in os.environ
    )  # --debug is an option of this command, not of the process  # the traceback is there for whoever asks
    assert not (scored / "lock").exists()


def test_disk_full_is_a_clean_error_and_leaves_old_files(scored, clips, monkeypatch):
    before = (scored / "scores" / "anom.mp4.json").read_bytes()

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fsutil, "write_text", full)
    line = assert_clean_error(invoke("score", clips.anomalous, *CPU, "-p", scored), match="No space left on device")
    assert "anom.mp4" in line
    assert (scored / "scores" / "anom.mp4.json").read_bytes() == before


def test_a_write_never_goes_straight_to_its_final_name(scored, clips, tmp_path, monkeypatch):
    """Every file the commands write is a temporary one beside its target, renamed into place."""
    import builtins

    real_open, written = builtins.open, []

    def spy(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(scored) in str(file):
            written.append(Path(file))
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", spy)
        for cmd in (
            ("extract", clips.frames_dir),
            ("train", "--stage", "mdn", "--steps", "8", *CPU),
            ("score", clips.anomalous, *CPU),
            ("plot", "anom.mp4"),
        ):
            res = invoke(*cmd, "-p", scored)
            assert res.exit_code == 0, res.output
    assert len(written) > 10
    bad = [p for p in written if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    assert not bad, bad
    assert not [p for p in scored.rglob(".*.tmp")]  # and none is left behind


# -- the write lock ------------------------------------------------------------------------------------


WAIT = ("--wait", "0.3")  # do not wait 5 s for a busy project


def test_readers_and_scorers_ignore_the_lock_and_trainers_are_refused_by_name(scored, clips, tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (scored / "lock").write_text(json.dumps({"pid": sleeper.pid, "command": "train", "started": time.time()}))
        labels = tmp_path / "labels.json"
        labels.write_text(json.dumps({"anom.mp4": [list(ANOMALY)]}))
        for cmd in (
            ("status",),
            ("plot", "anom.mp4", "--labels", labels),
            ("eval", labels, "--json"),
            ("score", clips.anomalous, *CPU),
            ("extract", clips.normal_b),
        ):  # while a model trains
            res = invoke(*cmd, "-p", scored)
            assert res.exit_code == 0, res.output
        for cmd in (("update", clips.normal_a, *CPU, *WAIT), ("train", *CPU, *WAIT)):
            line = assert_clean_error(invoke(*cmd, "-p", scored), exit_code=3, match="project is busy")
            assert f"'vidanom train' (pid {sleeper.pid})" in line
        assert json.loads((scored / "lock").read_text())["pid"] == sleeper.pid  # a live holder's lock stays
    finally:
        sleeper.kill()
        sleeper.wait()
    res = invoke("train", "--steps", "4", *CPU, "-p", scored)  # its process is gone: the lock is taken over
    assert res.exit_code == 0, res.output
    assert not (scored / "lock").exists()


def test_an_unreadable_lock_is_waited_for_then_taken_over_when_old(scored, clips):
    lock = scored / "lock"
    lock.write_text("")  # as a process killed between creating and writing it would leave it
    train = ("train", "--steps", "4", *CPU, *WAIT, "-p", scored)
    assert_clean_error(invoke(*train), exit_code=3, match="project is busy")
    old = time.time() - 60
    os.utime(lock, (old, old))
    res = invoke(*train)
    assert res.exit_code == 0, res.output
    assert not lock.exists()


def test_a_writer_clears_what_killed_writers_left_behind(scored, clips):
    dead = subprocess.Popen(["true"])
    dead.wait()
    models, partial = scored / "models", scored / "models" / ".partial"
    partial.mkdir()
    (models / f".staging-{dead.pid}").mkdir()
    (models / f".staging-{dead.pid}" / "vae.pt").write_bytes(b"half")
    leftovers = [
        partial / ".vae.pt.x1y2.tmp",
        scored / "cache" / f".clip.u8.{dead.pid}.ab12cd34.tmp",
        models / ".current.q.tmp",
        scored / f".lock.{dead.pid}.tmp",
        scored / "scores" / f".anom.mp4.csv.{dead.pid}.0123abcd.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"half a file")
    writer = subprocess.Popen(["sleep", "60"])  # scoring and extracting take no lock: their files are theirs
    try:
        busy = [
            scored / "scores" / f".anom.mp4.png.{writer.pid}.0a1b2c3d.tmp",
            scored / "cache" / f".clip2.u8.{writer.pid}.99aa88bb.tmp",
        ]
        for p in busy:
            p.write_bytes(b"")
        res = invoke("train", "--steps", "4", *CPU, "-p", scored)
        assert res.exit_code == 0, res.output
        assert not (models / f".staging-{dead.pid}").exists() and not any(p.exists() for p in leftovers)
        assert all(p.exists() for p in busy)
    finally:
        writer.kill()
        writer.wait()


# -- decoding has a time limit -------------------------------------------------------------------------


def test_decoding_that_stalls_is_stopped_by_the_time_limit(trained_project, clips, monkeypatch):
    from vidanom import video

    cfg = to_dict(tiny_config(frames={"decode_timeout": 0.2}))
    (trained_project / CONFIG_NAME).write_text(json.dumps(cfg))
    real, calls, slow_after = video._Scaler.__call__, [0], [10]

    def stalling(self, frame):
        calls[0] += 1
        if calls[0] > slow_after[0]:
            time.sleep(0.4)  # a decoder that has stopped making progress
        return real(self, frame)

    monkeypatch.setattr(video._Scaler, "__call__", stalling)
    t0 = time.monotonic()
    res = invoke("score", clips.anomalous, *CPU, "-p", trained_project)
    assert res.exit_code == 0, res.output
    (warning,) = warnings_of(res)
    assert "decoding stopped after 10 frames" in warning and "no frame decoded in 0.2 s" in warning
    assert json.loads((trained_project / "scores" / "anom.mp4.json").read_text())["frames"] == 10
    calls[0], slow_after[0] = 0, 0
    assert_clean_error(invoke("score", clips.normal_a, *CPU, "-p", trained_project), match="no frame decoded in 0.2 s")
    assert time.monotonic() - t0 < 10


# -- Ctrl-C: a checkpoint, then --resume ---------------------------------------------------------------


def interrupt_at(monkeypatch, stage: str, step: int) -> None:
    """Send this process a real SIGINT while a stage ('vae': the β-VAE, 'mdn': the LSTM-MDN) draws the
    batch of optimiser step `step`, as a user pressing Ctrl-C would."""
    from vidanom import fitting

    name = {"vae": "sample_batch", "mdn": "window_batch"}[stage]
    real, calls = getattr(fitting, name), [-1 if stage == "mdn" else 0]  # the LSTM-MDN first draws its held-out windows
    lengths: list[int] = []

    def wrapped(*args, **kwargs):
        lengths[:] = lengths or [args[-1]]  # the held-out windows' length: a step's own
        if stage == "mdn" and args[-1] != lengths[0]:  # made-up fast windows, cut longer, beside a step's
            return real(*args, **kwargs)
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGINT)
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fitting, name, wrapped)


def fitted_steps(path: Path) -> int:
    return torch.load(path, weights_only=True)["fitting"]["step"]


def model_tensors(version: Path) -> dict[str, torch.Tensor]:
    detector = Detector.load(version)
    return {
        **{f"vae:{k}": v for k, v in detector.vae.state_dict().items()},
        **{f"mdn:{k}": v for k, v in detector.mdn.state_dict().items()},
    }


def assert_same_model(a: Path, b: Path) -> None:
    ta, tb = model_tensors(a), model_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0, msg=k)
    ca, cb = (json.loads((v / "version.json").read_text())["threshold"] for v in (a, b))
    assert ca == pytest.approx(cb, abs=1e-6)


def test_ctrl_c_during_train_saves_a_checkpoint_and_resume_finishes_the_same_model(
    trained_project, tmp_path, monkeypatch
):
    reference = tmp_path / "reference"
    shutil.copytree(trained_project, reference)
    args = ("--steps", "16", "--seed", "0", *CPU)
    with monkeypatch.context() as m:
        interrupt_at(m, "vae", step=5)
        res = invoke("train", *args, "-p", trained_project)
    assert res.exit_code == 130, res.output
    assert res.stderr.strip().count("\n") == 0 and "--resume" in res.stderr and "Traceback" not in res.output
    part = trained_project / "models" / ".partial"
    assert fitted_steps(part / "vae.pt") == 6  # after the step during which Ctrl-C came, between two evaluations
    assert not (part / "mdn.pt").exists()
    assert Project.open(trained_project).current_version() == "v0001"
    assert not (trained_project / "lock").exists()
    status = invoke("status", "-p", trained_project)
    assert status.exit_code == 0 and "--resume" in status.stdout
    res = invoke("train", *args, "--resume", "-p", trained_project)
    assert res.exit_code == 0, res.output
    assert Project.open(trained_project).current_version() == "v0002" and not part.exists()
    res = invoke("train", *args, "-p", reference)  # the same run, never interrupted
    assert res.exit_code == 0, res.output
    assert_same_model(trained_project / "models" / "v0002", reference / "models" / "v0002")


@pytest.fixture(scope="module")
def scene_b(tmp_path_factory, clips: Clips) -> Path:
    frames, _ = square_frames(clips.n_frames, 10, 4, 1.0, 8)
    return write_video(tmp_path_factory.mktemp("scene_b") / "b1.mp4", np.ascontiguousarray(255 - frames))


def interrupted_update(monkeypatch, root: Path, scene_b: Path, args: tuple, stage: str, step: int) -> Path:
    """Ctrl-C an update of root at `step` of `stage` (see interrupt_at); returns a copy of root taken
    before, on which the same update can run uninterrupted."""
    reference = root.parent / "reference"
    shutil.copytree(root, reference)
    with monkeypatch.context() as m:
        interrupt_at(m, stage, step)
        res = invoke("update", scene_b, *args, "-p", root)
    assert res.exit_code == 130, res.output
    return reference


def assert_resume_matches_uninterrupted(root: Path, reference: Path, scene_b: Path, args: tuple) -> None:
    res = invoke("update", *args, "--resume", "-p", root)
    assert res.exit_code == 0, res.output
    res = invoke("update", scene_b, *args, "-p", reference)
    assert res.exit_code == 0, res.output
    assert_same_model(root / "models" / "v0002", reference / "models" / "v0002")


def test_ctrl_c_during_update_resumes_with_update_only(trained_project, scene_b, monkeypatch):
    args = ("--scene", "moved", "--steps", "8", *CPU)
    reference = interrupted_update(monkeypatch, trained_project, scene_b, args, "mdn", 0)
    part = trained_project / "models" / ".partial"
    assert fitted_steps(part / "vae.pt") == 8 and fitted_steps(part / "mdn.pt") == 1
    # resuming it as another run would mix two runs' checkpoints: refused, and nothing is lost
    assert_clean_error(
        invoke("train", "--resume", "--steps", "8", *CPU, "-p", trained_project), match="interrupted run"
    )
    assert_clean_error(
        invoke("update", *args, "--strategy", "finetune", "--resume", "-p", trained_project), match="same command"
    )
    assert (part / "mdn.pt").exists()
    assert_resume_matches_uninterrupted(trained_project, reference, scene_b, args)
    info = json.loads((trained_project / "models" / "v0002" / "version.json").read_text())
    assert (info["parent"], info["scene"], info["strategy"]) == ("v0001", "moved", "replay")


def test_ctrl_c_amid_a_replayed_update_resumes_to_the_same_model(trained_project, scene_b, monkeypatch):
    """Replay and its distillation draw their samples from a generator of each step: a resumed update
    must draw the same ones as an uninterrupted run."""
    args = ("--scene", "moved", "--steps", "16", *CPU)
    reference = interrupted_update(monkeypatch, trained_project, scene_b, args, "vae", 5)
    assert fitted_steps(trained_project / "models" / ".partial" / "vae.pt") == 6
    assert_resume_matches_uninterrupted(trained_project, reference, scene_b, args)
    assert json.loads((trained_project / "models" / "v0002" / "version.json").read_text())["replay_distill"] > 0


# -- SIGKILL at any moment: the previous model stays, the project stays consistent ---------------------


def check_consistent(root: Path, clips: Clips, v1: dict[str, str]) -> str:
    """status and score work, on the current version, which is complete; v0001 is untouched."""
    res = invoke("status", "-p", root)
    assert res.exit_code == 0, res.output
    project = Project.open(root)
    current = project.current_version()
    assert current in ("v0001", "v0002")
    Detector.load(root / "models" / current)  # loadable
    assert digest(root / "models" / "v0001") == v1
    res = invoke("score", clips.anomalous, *CPU, "-p", root)
    assert res.exit_code == 0, res.output
    assert json.loads((root / "scores" / "anom.mp4.json").read_text())["model_version"] == current
    return current


def test_sigkill_at_any_moment_of_train_loses_nothing(scored, clips, tmp_path):
    """`python -m vidanom train` in a subprocess, frozen (SIGSTOP) at moments seen from the files it writes:
    a copy of the project taken while it is frozen is what a SIGKILL at that moment leaves. At the last
    moment, while it publishes the new version, it gets a real SIGKILL."""
    v1 = digest(scored / "models" / "v0001")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"anom.mp4": [list(ANOMALY)]}))
    models, part = scored / "models", scored / "models" / ".partial"
    moments = {
        "started": lambda: (scored / "lock").exists(),
        "mid-vae": lambda: (part / "vae.pt").exists(),  # the β-VAE's first evaluation done
        "mid-mdn": lambda: (part / "mdn.pt").exists(),
        "publishing": lambda: any(models.glob(".staging-*")) or (models / "v0002").exists(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDANOM_")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidanom", "train", "--steps", "24", *CPU, "-p", str(scored)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    snapshots = []
    try:
        deadline = time.monotonic() + 300
        for name, reached in moments.items():
            while not reached():
                assert proc.poll() is None, f"train ended before '{name}': {proc.stderr.read().decode()}"
                assert time.monotonic() < deadline, f"'{name}' never came"
                time.sleep(0.002)
            proc.send_signal(signal.SIGSTOP)
            if name == "publishing":
                proc.kill()  # SIGKILL, the real thing
                break
            snapshots.append(shutil.copytree(scored, tmp_path / name, symlinks=True))
            if name == "mid-vae":  # training is under way: reading and scoring work, a second training is refused
                for cmd in (
                    ("status",),
                    ("plot", "anom.mp4", "--labels", labels),
                    ("eval", labels),
                    ("score", clips.anomalous, *CPU),
                ):
                    res = invoke(*cmd, "-p", scored)
                    assert res.exit_code == 0, res.output
                line = assert_clean_error(invoke("train", "--steps", "4", *CPU, *WAIT, "-p", scored), exit_code=3)
                assert f"'vidanom train' (pid {proc.pid})" in line
            proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for root in snapshots + [scored]:  # the dead process's lock is taken over by every command
        check_consistent(root, clips, v1)
    # and training again (here: resuming) cleans up and publishes a complete version
    for root in (tmp_path / "mid-vae", scored):
        res = invoke("train", "--steps", "24", "--resume", *CPU, "-p", root)
        assert res.exit_code == 0, res.output
        project = Project.open(root)
        assert project.current_version() in ("v0002", "v0003") and not project.partial_dir.exists()
        assert not list(root.rglob(".*.tmp")) and not list((root / "models").glob(".staging-*"))
        assert check_consistent(root, clips, v1) == project.current_version()


# -- fuzz: random bytes, truncated and bit-flipped videos -------------------------------------------------


def fuzz_cases(seeds: list[bytes], n: int, rng: random.Random):
    """n (kind, bytes, suffix) cases: random bytes, and real clips truncated, bit-flipped or both."""
    suffixes = [".mp4", ".mkv", ".avi", ".ts", ".mov"]
    for i in range(n):
        kind = ("random", "random-after-header", "truncated", "flipped", "truncated+flipped")[i % 5]
        seed = rng.choice(seeds)
        if kind == "random":
            data = rng.randbytes(rng.randint(0, 3000))
        elif kind == "random-after-header":
            data = seed[: rng.randint(8, 200)] + rng.randbytes(rng.randint(0, 3000))
        else:
            data = bytearray(seed)
            if "flipped" in kind:
                for _ in range(rng.randint(1, 40)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            if "truncated" in kind:
                data = data[: rng.randrange(len(data))]
            data = bytes(data)
        yield kind, data, rng.choice(suffixes)


def test_fuzz_score_either_scores_or_fails_cleanly(scored_template, tmp_path, monkeypatch):
    frames, _ = square_frames(16, 4, 20, 2.0, 8)
    seeds = [
        write_video(tmp_path / "s.mp4", frames).read_bytes(),
        write_with(tmp_path / "s_fast.mp4", frames, {"movflags": "faststart"}).read_bytes(),
        write_video(tmp_path / "s.mkv", frames).read_bytes(),
        write_video(tmp_path / "s.avi", frames).read_bytes(),
        write_video(tmp_path / "s.ts", frames, codec="libx264").read_bytes(),
        write_video(tmp_path / "s2.ts", frames).read_bytes(),
    ]  # flipped, it once crashed PyAV's demuxer
    root = tmp_path / "proj"
    shutil.copytree(scored_template, root)
    project = Project.open(root)
    outcomes, samples = {"scored": 0, "error": 0}, {"scored": [], "error": []}
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails the run instead of stalling it
    try:
        with monkeypatch.context() as m:
            # in-process and without the timeline PNG (slow to draw, and not under test here): ~20 ms a case
            m.setattr(results.plot, "timeline", lambda path, *a, **k: path)
            for i, (kind, data, suffix) in enumerate(fuzz_cases(seeds, 200, random.Random(0))):
                path = tmp_path / f"case{i:03d}{suffix}"
                path.write_bytes(data)
                t0 = time.monotonic()
                try:
                    (result,) = results.score(project, path, torch.device("cpu"))
                except VidanomError as exc:
                    assert "\n" not in str(exc) and str(path) in str(exc), (i, kind, str(exc))
                    outcome = "error"
                except Exception as exc:  # noqa: BLE001 - anything else is a crash
                    raise AssertionError(f"case {i} ({kind}, {len(data)} bytes): {type(exc).__name__}: {exc}") from exc
                else:
                    rows = (root / "scores" / f"{path.name}.csv").read_text().splitlines()
                    assert result.frames >= 1 and len(rows) == result.frames + 1, (i, kind)
                    assert np.isfinite(result.peak)
                    outcome = "scored"
                assert time.monotonic() - t0 < 20, (i, kind)
                outcomes[outcome] += 1
                samples[outcome].append(path)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert outcomes["scored"] > 25 and outcomes["error"] > 25, outcomes
    for path in samples["scored"][:3]:  # and through the CLI, as the user sees it
        res = invoke("score", path, *CPU, "-p", root)
        assert res.exit_code == 0, res.output
        assert all(line.startswith("warning: ") for line in res.stderr.splitlines())
    for path in samples["error"][:3]:
        assert_clean_error(invoke("score", path, *CPU, "-p", root), match=path.name)
