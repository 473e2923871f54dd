"""The parts that make scoring fast, checked for behaviour only (speed is judged by benchmarks/throughput.py):
the decode-ahead thread, the shared scaler, the inference copy of the VAE, the CSV writer, and
scoring through all of them against scoring without them."""

from __future__ import annotations

import csv
import io
import threading
import time

import av
import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import tiny_config

from vidanom import results
from vidanom.detector import Detector
from vidanom.progress import no_progress
from vidanom.config import FrameConfig, ProjectConfig, with_overrides
from vidanom.errors import VideoError
from vidanom.inference import SubPixelConvTranspose, for_inference, scoring_threads, torch_threads
from vidanom.prefetch import prefetch
from vidanom.project import Project
from vidanom.store import ScoreStore
from vidanom.scoring import iter_scores, make_scorer
from vidanom.vae import BetaVAE
from vidanom.video import DecodeReport, Source, iter_chunks


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-prefetch")]


def wait_until(cond, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- prefetch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_prefetch_yields_the_decoders_chunks_in_order(clips, depth):
    fc = FrameConfig(width=32, height=24, channels=3)
    direct = list(iter_chunks(Source(clips.moving), fc, 7))
    report = DecodeReport()
    ahead = list(prefetch(iter_chunks(Source(clips.moving), fc, 7, report), depth, name="test-prefetch"))
    assert [len(c) for c in ahead] == [len(c) for c in direct]
    for a, b in zip(ahead, direct):
        np.testing.assert_array_equal(a, b)
    assert report.frames == clips.n_frames
    assert wait_until(lambda: not prefetch_threads())


def test_prefetch_starts_nothing_before_the_first_item_is_asked_for():
    started = []

    def items():
        started.append(True)
        yield 1

    gen = prefetch(items(), name="test-prefetch")
    time.sleep(0.05)
    assert not started and not prefetch_threads()
    assert list(gen) == [1]


def test_prefetch_raises_the_decoders_error(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video\n" * 20)
    with pytest.raises(VideoError, match="fake.mp4"):
        list(prefetch(iter_chunks(Source(fake), FrameConfig(), 4), name="test-prefetch"))
    assert wait_until(lambda: not prefetch_threads())


def test_prefetch_raises_a_midway_error_after_the_items_before_it():
    def items():
        yield from range(3)
        raise RuntimeError("decoder broke")

    got = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for x in prefetch(items(), depth=1, name="test-prefetch"):
            got.append(x)
    assert got == [0, 1, 2]


@pytest.mark.parametrize("how", ["break", "error"])
def test_prefetch_stops_and_closes_the_source_when_the_consumer_stops_early(how):
    produced, closed = [], threading.Event()

    def endless():
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()  # e.g. the decoder closing its file

    gen = prefetch(endless(), depth=2, name="test-prefetch")
    if how == "break":
        for x in gen:
            if x == 3:
                break
        gen.close()  # what leaving a for loop over a generator held elsewhere amounts to
    else:
        with pytest.raises(ZeroDivisionError):
            for x in gen:
                if x == 3:
                    _ = 1 / 0
        gen.close()
    assert closed.wait(5.0)
    assert wait_until(lambda: not prefetch_threads())
    assert len(produced) <= 4 + 2 + 1  # the consumed ones, the queue, and at most one in hand


def test_prefetch_stops_its_thread_when_the_real_decoder_is_abandoned(clips):
    gen = prefetch(iter_chunks(Source(clips.normal_a), FrameConfig(32, 32, 1), 1), depth=1, name="test-prefetch")
    first = next(gen)
    assert first.shape == (1, 32, 32, 1)
    assert prefetch_threads()
    gen.close()
    assert not prefetch_threads()  # close() joins


def test_prefetch_refuses_a_depth_below_one():
    with pytest.raises(ValueError):
        next(prefetch(iter([1]), depth=0))


# -- decoding with one scaler per clip ---------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_shared_scaler_gives_the_same_pixels_as_reformatting_each_frame(clips, channels):
    fc = FrameConfig(width=40, height=30, channels=channels)
    fmt = "gray" if channels == 1 else "rgb24"
    with av.open(str(clips.moving)) as container:
        ref = np.stack(
            [
                f.reformat(width=40, height=30, format=fmt).to_ndarray().reshape(30, 40, channels)
                for f in container.decode(video=0)
            ]
        )
    got = np.concatenate(list(iter_chunks(Source(clips.moving), fc, 16)))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("threads", [1, 2])
def test_decoding_threads_do_not_change_the_frames(clips, threads):
    fc = FrameConfig(width=32, height=24, channels=1)
    auto = np.concatenate(list(iter_chunks(Source(clips.normal_b), fc, 9)))  # libx264
    got = np.concatenate(list(iter_chunks(Source(clips.normal_b), fc, 9, threads=threads)))
    np.testing.assert_array_equal(got, auto)


def test_chunks_are_independent_arrays(clips):
    chunks = list(iter_chunks(Source(clips.normal_a), FrameConfig(32, 32, 1), 5))
    before = [c.copy() for c in chunks]
    chunks[0][:] = 0  # a consumer writing into one chunk must not change another
    for a, b in zip(chunks[1:], before[1:]):
        np.testing.assert_array_equal(a, b)


# -- the inference copy of the VAE -----------------------------------------------------------------


@pytest.mark.parametrize("c_in, c_out", [(32, 2), (8, 6), (5, 3)])
def test_subpixel_transposed_convolution_equals_the_original(c_in, c_out):
    torch.manual_seed(c_in)
    ct = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    x = torch.randn(3, c_in, 6, 10)
    with torch.no_grad():
        torch.testing.assert_close(SubPixelConvTranspose(ct)(x), ct(x), rtol=1e-5, atol=1e-5)


def test_subpixel_refuses_other_transposed_convolutions():
    with pytest.raises(ValueError):
        SubPixelConvTranspose(nn.ConvTranspose2d(4, 2, 3, 2, 1))


@pytest.mark.parametrize(
    "cfg",
    [
        with_overrides(ProjectConfig(), frames={"width": 96}),  # the default model at a 3:2 frame
        tiny_config(),
        with_overrides(ProjectConfig(), frames={"width": 48, "height": 32, "channels": 3}, vae={"coords": False}),
        with_overrides(ProjectConfig(), frames={"width": 64, "motion_lag": 0}, vae={"hidden": (16, 32)}),
    ],
    ids=["default", "tiny", "rgb-no-coords", "no-motion"],
)
def test_inference_copy_computes_the_same_and_leaves_the_model_alone(cfg):
    torch.manual_seed(0)
    vae = BetaVAE(cfg.vae_config()).eval()
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    fast = for_inference(vae, torch.device("cpu"))
    x = torch.rand(5, cfg.in_channels, cfg.frames.height, cfg.frames.width)
    with torch.inference_mode():
        for a, b in zip(vae(x, sample=False), fast(x, sample=False)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for k, v in vae.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous()
    assert not any(getattr(m, "inplace", False) for m in vae.modules())


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError):
        with torch_threads(1):
            raise KeyError
    assert torch.get_num_threads() == before
    assert 1 <= scoring_threads() <= max(1, before)


# -- the CSV writer --------------------------------------------------------------------------------


def csv_writer_reference(comps, scenes, scores, flags, times) -> str:
    """What scoring wrote with csv.writer, row by row, before it formatted the rows itself."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["frame", "time", "recon", "kl", "nll", "still", "frozen", "direction", "scene", "score", "anomalous"])
    for i, (c, scene, s, f, t) in enumerate(zip(comps, scenes, scores, flags, times)):
        w.writerow(
            [
                i,
                f"{t:.3f}",
                f"{c[0]:.5g}",
                f"{c[1]:.5g}",
                "" if np.isnan(c[2]) else f"{c[2]:.5g}",
                "" if np.isnan(c[3]) else f"{c[3]:.5g}",
                "" if np.isnan(c[4]) else f"{c[4]:.5g}",
                "" if np.isnan(c[5]) else f"{c[5]:.5g}",
                scene,
                f"{s:.5g}",
                int(f),
            ]
        )
    return buf.getvalue()


@pytest.mark.parametrize("n", [0, 1, 500])
@pytest.mark.parametrize("dt", [0.04, 1001 / 30000, None])
def test_csv_is_byte_for_byte_what_csv_writer_wrote(tmp_path, n, dt):
    rng = np.random.default_rng(n)
    # a constant rate, or (None) irregular times from timestamps
    times = np.arange(n) * dt if dt else np.cumsum(rng.exponential(0.2, n))
    comps = (rng.standard_normal((n, 6)) * 10.0 ** rng.uniform(-6, 6, (n, 6))).astype(np.float32)
    scores = (rng.standard_normal(n) * 3).astype(np.float32)
    if n > 10:
        comps[rng.random(n) < 0.2, 2:4] = np.nan  # no MDN surprise yet
        comps[rng.random(n) < 0.1, 4:] = np.nan  # a calibration without a usual picture or directions
        comps[3, 0], comps[4, 1], comps[5, 0] = np.inf, -np.inf, -0.0
    flags = scores > 1.0
    scenes = rng.choice(["default", "night-2", "moved_cam.b"], n).tolist()
    store = ScoreStore(tmp_path)
    store.write("s", {}, times=times, components=comps, scenes=scenes, scores=scores, flags=flags)
    assert store.files("s").csv.read_bytes() == csv_writer_reference(comps, scenes, scores, flags, times).encode()


# -- scoring through all of it ---------------------------------------------------------------------


def test_scoring_equals_plain_streaming_with_the_original_models(trained_project, clips):
    project = Project.find(trained_project)
    detector = Detector.load(project)
    vae, mdn, cal = detector.vae, detector.mdn, detector.calibration
    cfg = project.config
    threads = torch.get_num_threads()
    (times, comps, _, scores, _), report = results._score_arrays(
        detector, Source(clips.anomalous), torch.device("cpu"), no_progress
    )
    assert torch.get_num_threads() == threads
    plain = make_scorer(vae, mdn, cfg, torch.device("cpu"))
    chunks = iter_chunks(Source(clips.anomalous), cfg.frames, cfg.score.batch_size)
    ref = [(c.numpy(), s.numpy()) for c, _, s in iter_scores(plain, chunks, cal, cfg.score)]
    np.testing.assert_allclose(comps, np.concatenate([c for c, _ in ref]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, np.concatenate([s for _, s in ref]), rtol=1e-4, atol=1e-4)
    assert report.frames == len(scores) == clips.n_frames
    np.testing.assert_allclose(times, np.arange(clips.n_frames) / 25.0, atol=1e-9)
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("vidanom-decode")])


def test_scoring_error_midway_stops_the_decoding_thread(trained_project, clips):
    project = Project.find(trained_project)
    detector = Detector.load(project)
    detector.config = with_overrides(detector.config, score={"batch_size": 4})

    def progress(task, done, total, info):
        if done >= 8:
            raise KeyboardInterrupt  # Ctrl-C while scoring

    with pytest.raises(KeyboardInterrupt):
        results._score_arrays(detector, Source(clips.anomalous), torch.device("cpu"), progress)
    assert not [t for t in threading.enumerate() if t.name.startswith("vidanom-decode")]
