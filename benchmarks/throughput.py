"""Throughput and memory of `vidanom score` against the floor set by decoding, on synthetic 720p H.264.

    python benchmarks/throughput.py                       # ~3-4 minutes on 2 shared cores
    python benchmarks/throughput.py --repeats 5 --json /tmp/throughput.json
    python benchmarks/throughput.py --extract-train-memory    # also peak RSS of extract/train, 1 vs 10 min

It makes (with PyAV) a 720p, 25 fps H.264 clip with moving shapes on a textured, noisy background
(and one fast intruder, so there is something to find), trains a small default-config project on
its first seconds through the library, and then, in rounds that interleave the measurements so
that the load of a shared machine falls on all of them alike:
  decode        decode + resize alone: vidanom.video.iter_chunks (PyAV's decoder and one FFmpeg
                scaler context at the project's frame size, no model), with FFmpeg's own choice
                of decoding threads and with one thread (scoring uses one on 2 cores)
  floor         per round, the faster of the two
  naive PyAV    the same with `frame.reformat` on every frame, for reference
  loop          the scoring loop alone (Detector.score_source): decode + models, no files written
  score         vidanom.score in this process (no start-up): decode, models, CSV, JSON, PNG
  score (CLI)   `vidanom score` as a subprocess: with interpreter, torch and model start-up
Each row gives the median over rounds of frames/s and of CPU time per frame (CPU time is less
disturbed by other processes than wall time), and the ratio score / floor per round.
Then the peak RSS of `vidanom score` on the 1-minute clip and on a 10-minute one (the same
packets muxed ten times, so no re-encoding), and training throughput of the β-VAE and LSTM-MDN.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from vidanom import cache, results, training
from vidanom.config import ProjectConfig, fixed_steps, parse_overrides, with_overrides
from vidanom.detector import Detector
from vidanom.project import Project
from vidanom.fitting import MDN_WINDOWS
from vidanom.video import Source, iter_chunks

WIDTH, HEIGHT, FPS = 1280, 720, 25


# -- the clips -------------------------------------------------------------------------------------


def make_clip(path: Path, seconds: float, bitrate: int = 2_500_000, seed: int = 0, gop: int | None = None) -> Path:
    """720p H.264 (libx264 ultrafast at `bitrate`): shapes drifting over a textured, noisy background.

    The luma plane is drawn directly (gray content, neutral chroma), so making a minute costs a few
    seconds; a 2.5 Mbit/s stream decodes at about the speed of real 720p surveillance footage.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = 60 + 90 * xs / WIDTH + 40 * ys / HEIGHT + 25 * np.sin(xs / 23.0) * np.cos(ys / 31.0)
    backgrounds = [np.clip(base + rng.normal(0, 2.5, base.shape), 0, 255).astype(np.uint8) for _ in range(7)]
    walkers = [
        (
            rng.uniform(0, WIDTH),
            rng.uniform(0, HEIGHT),
            rng.uniform(-3, 3),
            rng.uniform(-2, 2),
            int(rng.integers(30, 90)),
            int(rng.integers(150, 250)),
        )
        for _ in range(6)
    ]
    chroma = np.full((HEIGHT // 2, WIDTH), 128, np.uint8)  # U and V planes, stacked as from_ndarray wants
    n = int(round(seconds * FPS))
    intruder = (int(n * 0.7), int(n * 0.7) + 3 * FPS)  # a big, fast shape for three seconds
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "ultrafast", **({"g": str(gop)} if gop else {})}  # gop: frames between keyframes
        for t in range(n):
            y = backgrounds[t % len(backgrounds)].copy()
            for x0, y0, vx, vy, size, shade in walkers:
                x, yy = int(x0 + vx * t) % (WIDTH - size), int(y0 + vy * t) % (HEIGHT - size)
                y[yy : yy + size, x : x + size] = shade
            if intruder[0] <= t < intruder[1]:
                x = int(40 * (t - intruder[0])) % (WIDTH - 160)
                y[300:460, x : x + 160] = 250
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def copy_packets(src: Path, dst: Path, repeats: int = 1, seconds: float | None = None) -> Path:
    """Mux the video packets of src `repeats` times in a row into dst (or only its first `seconds`).

    No re-encoding: a 10-minute clip from a 1-minute one in about a second. The clip starts with a
    keyframe and has no B-frames, so every repetition decodes on its own.
    """
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ins = inp.streams.video[0]
        outs = out.add_stream_from_template(ins)
        packets = [p for p in inp.demux(ins) if p.size > 0 and p.pts is not None]
        step = packets[1].pts - packets[0].pts if len(packets) > 1 else 1
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + step
        if seconds is not None:
            limit = packets[0].pts + seconds / float(ins.time_base)
            packets = [p for p in packets if p.pts < limit]
        for r in range(repeats):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts + r * span, (p.dts if p.dts is not None else p.pts) + r * span
                q.time_base, q.is_keyframe, q.stream = ins.time_base, p.is_keyframe, outs
                out.mux(q)
    return dst


# -- measuring -------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Runs:
    """Wall and CPU seconds of repeated runs over the same frames."""

    frames: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    def fps(self) -> float:
        return self.frames / statistics.median(self.wall)

    def cpu_ms(self) -> float:
        return 1000 * statistics.median(self.cpu) / self.frames

    def cores(self) -> float:
        return statistics.median(c / w for c, w in zip(self.cpu, self.wall))


def timed(fn) -> tuple[float, float, object]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def decode(clip: Path, project: Project, threads: int) -> int:
    cfg = project.config
    return sum(len(c) for c in iter_chunks(Source(clip), cfg.frames, cfg.score.batch_size, threads=threads))


def naive_pyav(clip: Path, project: Project) -> int:
    fc, n = project.config.frames, 0
    fmt = "gray" if fc.channels == 1 else "rgb24"
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.reformat(width=fc.width, height=fc.height, format=fmt).to_ndarray()
            n += 1
    return n


# The child writes its own peak RSS (VmHWM) when it exits. getrusage/wait4 would not do: a child's
# ru_maxrss keeps the high-water mark of the forked copy of this (large) process from before exec.
CHILD = """import atexit, os
def _peak():
    with open('/proc/self/status') as f:
        kb = next((line.split()[1] for line in f if line.startswith('VmHWM:')), '0')
    with open(os.environ['VIDANOM_BENCH_RSS'], 'w') as out:
        out.write(kb)
atexit.register(_peak)
from vidanom.cli import app
app()
"""


def run_cli(args: list[str], work: Path) -> tuple[float, float, float]:
    """Run a vidanom command in a fresh interpreter → (wall s, CPU s, peak RSS MB) of that process."""
    rss_file = work / ".peak_rss"
    rss_file.unlink(missing_ok=True)
    env = {**os.environ, "VIDANOM_BENCH_RSS": str(rss_file)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)  # the CPU time of this child alone
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{out.decode(errors='replace')}")
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else float("nan")
    return wall, usage.ru_utime + usage.ru_stime, rss


class StageClock:
    """A progress callback that notes when each task reports, to time the training stages."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, int, int]]] = {}

    def __call__(self, task: str, done: int, total: int, info: dict) -> None:
        self.events.setdefault(task, []).append((time.perf_counter(), done, total))

    def rate(self, task: str, units_at_end: float) -> float | None:
        """units/s between the task's first and last report; units_at_end: units when done == total."""
        ev = self.events.get(task, [])
        if len(ev) < 2 or ev[-1][0] <= ev[0][0]:
            return None
        (t0, d0, total), (t1, d1, _) = ev[0], ev[-1]
        return units_at_end * (d1 - d0) / max(total, 1) / (t1 - t0)


# -- the benchmark ---------------------------------------------------------------------------------


def span(seconds: float) -> str:
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print(fmt_row(header, widths))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt_row(r, widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the scored clip")
    ap.add_argument("--train-seconds", type=float, default=20.0, help="its first part, to train on")
    ap.add_argument("--long-repeats", type=int, default=10, help="the long clip is the clip this many times")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the interleaved speed measurements")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--mdn-steps", type=int, default=600)
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. score.batch_size=64")
    ap.add_argument(
        "--extract-train-memory",
        action="store_true",
        help="also peak RSS of extract and of train (100 + 100 steps) on the short and the long clip "
        "(slow: training on the long clip takes about 10 minutes on 2 busy cores)",
    )
    ap.add_argument("--workdir", type=Path, help="keep clips and projects here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vidanom-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    print(
        f"work folder {work}; {os.cpu_count()} cores, load average {load0[0]:.1f}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), PyAV {av.__version__}",
        flush=True,
    )

    clip = work / f"clip_{args.seconds:g}s.mp4"
    t0 = time.perf_counter()
    if not clip.exists():
        make_clip(clip, args.seconds)
    long_clip = work / f"clip_{args.seconds:g}s_x{args.long_repeats}.mp4"
    if not long_clip.exists():
        copy_packets(clip, long_clip, repeats=args.long_repeats)
    train_clip = copy_packets(clip, work / "train.mp4", seconds=args.train_seconds)
    mb = clip.stat().st_size / 1e6
    print(
        f"clips made in {time.perf_counter() - t0:.0f} s: {clip.name} {span(args.seconds)} ({mb:.1f} MB, "
        f"{8 * mb / args.seconds:.1f} Mbit/s), {long_clip.name} {span(args.seconds * args.long_repeats)}, "
        f"{train_clip.name} {span(args.train_seconds)}",
        flush=True,
    )

    # a small project of the default architecture, trained through the library
    root = work / "project"
    shutil.rmtree(root, ignore_errors=True)
    sets = parse_overrides(args.set)
    sets["train"] = {**fixed_steps(args.vae_steps), "mdn_steps": args.mdn_steps, **sets.get("train", {})}
    cfg = with_overrides(ProjectConfig(), **sets)
    project = Project.init(root, cfg)
    clock = StageClock()
    t0 = time.perf_counter()
    training.train(project, [train_clip], device=torch.device("cpu"), progress=clock)
    train_s = time.perf_counter() - t0
    project = Project.open(root)  # its frame size, as extraction resolved it from the clip's aspect ratio
    frames = sum(m.frames for m in cache.clips(project.cache_dir, project.config.frames))
    tc = cfg.train
    rates = {  # frames per second: of the β-VAE's batches, and of the LSTM-MDN's windows (all cells each)
        "vae": clock.rate("vae", tc.vae_steps * tc.batch_size),
        "mdn": clock.rate("mdn", tc.mdn_steps * MDN_WINDOWS * tc.seq_len),
        "calibrate": clock.rate("calibrate", 2 * frames),
    }
    print(f"trained in {train_s:.0f} s on {frames} frames", flush=True)

    # interleaved rounds, so that a busy spell of the machine falls on every kind of run
    results.score(project, train_clip)  # warm-up: imports matplotlib, first torch calls
    detector = Detector.load(project)
    kinds = {
        "decode": lambda: decode(clip, project, threads=0),
        "decode1": lambda: decode(clip, project, threads=1),
        "loop": lambda: sum(len(c.scores) for c in detector.score_source(Source(clip), torch.device("cpu"))),
        "score": lambda: results.score(project, clip)[0].frames,
        "cli": lambda: run_cli(["score", str(clip), "--device", "cpu", "-p", str(root)], work),
        "naive": lambda: naive_pyav(clip, project),
    }
    runs = {k: Runs() for k in (*kinds, "floor")}
    for r in range(args.repeats):
        for kind, fn in kinds.items():
            wall, cpu, out = timed(fn)
            run = runs[kind]
            if kind == "cli":
                wall, cpu, rss = out  # the child's own wall and CPU time
                run.rss_mb.append(rss)
            else:
                run.frames = out
            run.wall.append(wall)
            run.cpu.append(cpu)
        runs["cli"].frames = runs["score"].frames
        fastest = min(("decode", "decode1"), key=lambda k: runs[k].wall[-1])  # the floor of this round
        f = runs["floor"]
        f.frames = runs[fastest].frames
        f.wall.append(runs[fastest].wall[-1])
        f.cpu.append(runs[fastest].cpu[-1])
        score = runs["score"]
        print(
            f"round {r + 1}: floor {f.frames / f.wall[-1]:.0f} fps, score {score.frames / score.wall[-1]:.0f}"
            f" fps, ratio {f.wall[-1] / score.wall[-1]:.2f}",
            flush=True,
        )
    if not runs["floor"].frames == runs["loop"].frames == runs["score"].frames:
        raise SystemExit(f"decoded {runs['floor'].frames} frames but scored {runs['score'].frames}")

    def ratios(kind: str) -> list[float]:  # per round: same frames, so the ratio of wall times
        return [f / w for f, w in zip(runs["floor"].wall, runs[kind].wall)]

    long_wall, long_cpu, long_rss = run_cli(["score", str(long_clip), "--device", "cpu", "-p", str(root)], work)
    long_frames = json.loads((root / "scores" / f"{long_clip.name}.json").read_text())["frames"]

    memory = {"score": (max(runs["cli"].rss_mb), long_rss)}
    if args.extract_train_memory:
        for name, c in (("short", clip), ("long", long_clip)):
            proj = work / f"mem_{name}"
            shutil.rmtree(proj, ignore_errors=True)
            Project.init(proj, with_overrides(ProjectConfig(), train=fixed_steps(100)))
            ex = run_cli(["extract", str(c), "-p", str(proj)], work)
            tr = run_cli(["train", "--device", "cpu", "-p", str(proj)], work)
            memory.setdefault("extract", []).append(ex[2])
            memory.setdefault("train (100 + 100 steps)", []).append(tr[2])
            print(f"{name}: extract {ex[0]:.0f} s, train {tr[0]:.0f} s", flush=True)
            shutil.rmtree(proj / "cache", ignore_errors=True)

    n = runs["floor"].frames
    labels = {
        "decode": "decode + resize, FFmpeg's threads",
        "decode1": "decode + resize, 1 decoding thread",
        "floor": "floor: the faster of the two, per round",
        "naive": "naive PyAV (frame.reformat per frame)",
        "loop": "scoring loop (decode + models, no files)",
        "score": "vidanom score, in-process (no start-up)",
        "cli": "vidanom score, command (with start-up)",
    }
    rows = []
    for kind, label in labels.items():
        rs = ratios(kind)
        spread = f"  ({min(rs):.2f}-{max(rs):.2f})" if kind != "floor" else ""
        rows.append(
            [
                label,
                f"{runs[kind].fps():.0f}",
                f"{runs[kind].cpu_ms():.2f}",
                f"{runs[kind].cores():.2f}",
                f"{statistics.median(rs):.2f}{spread}",
            ]
        )
    rows.append(
        [
            f"vidanom score, command, {span(long_frames / FPS)} clip",
            f"{long_frames / long_wall:.0f}",
            f"{1000 * long_cpu / long_frames:.2f}",
            f"{long_cpu / long_wall:.2f}",
            "",
        ]
    )
    print_table(
        f"Scoring {n} frames of 720p H.264 at {project.config.frames.width}x{project.config.frames.height} "
        f"{'gray' if cfg.frames.channels == 1 else 'RGB'} (median of {args.repeats} interleaved rounds)",
        ["", "frames/s", "CPU ms/frame", "cores", "ratio to floor"],
        rows,
    )
    startup = statistics.median(runs["cli"].wall) - statistics.median(runs["score"].wall)
    fl, lo, sc = runs["floor"].cpu_ms(), runs["loop"].cpu_ms(), runs["score"].cpu_ms()
    print(
        f"CPU per frame: decoding {fl:.2f} ms + models {lo - fl:.2f} ms + CSV, JSON and PNG {sc - lo:.2f} ms; "
        f"where scoring gets no more CPU than decoding alone, the ratio tends to {fl / sc:.2f}"
    )
    print(
        f"start-up and model loading of the command: {startup:.1f} s; "
        "targets: vidanom score in-process >= 0.6 of the floor and >= 500 frames/s"
    )
    if args.set:
        print("config overrides:", " ".join(args.set))

    mem_rows = [[k, f"{v[0]:.0f}", f"{v[1]:.0f}", f"{v[1] - v[0]:+.0f}"] for k, v in memory.items()]
    print_table(
        "Peak RSS (MB) of the command",
        ["", f"{span(args.seconds)} clip", f"{span(args.seconds * args.long_repeats)} clip", "difference"],
        mem_rows,
    )

    train_rows = [[k, "n/a" if v is None else f"{v:.0f}"] for k, v in rates.items()]
    fc = project.config.frames
    print_table(
        f"Training throughput at {fc.width}x{fc.height}, hidden {cfg.vae.hidden} "
        f"({frames} frames, {torch.get_num_threads()} torch threads)",
        ["stage", "frames/s"],
        train_rows,
    )
    print(
        "  vae: frames of the β-VAE's batches per second; mdn: frames of the LSTM-MDN's windows per second "
        "(each with every cell of the grid); calibrate: frames per second of its two passes"
    )
    load1 = os.getloadavg()
    print(
        f"\nload average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; "
        f"benchmark took {time.perf_counter() - t_start:.0f} s"
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "frames": n,
                    "fps": {k: v.fps() for k, v in runs.items()},
                    "cpu_ms_per_frame": {k: v.cpu_ms() for k, v in runs.items()},
                    "ratio": statistics.median(ratios("score")),
                    "ratios": {k: ratios(k) for k in runs},
                    "long": {"frames": long_frames, "fps": long_frames / long_wall},
                    "peak_rss_mb": {k: list(v) for k, v in memory.items()},
                    "training_fps": rates,
                    "load": [load0[0], load1[0]],
                },
                indent=2,
            )
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
