"""The fleet on one machine: scoring many cameras' clips on Ray, and one model trained by torchrun.

    python benchmarks/fleet.py --data ../shared/data/ucsd_ped1          # about 15 minutes on 2 cores
    python benchmarks/fleet.py --skip-ddp                                # the scoring part alone

Scoring: 3 cameras × 8 clips of 720p H.264 (made here with throughput.make_clip, 10 s each), one
small default-architecture model per camera. Each clip scored by its own `vidanom score` command,
one after the other, against `vidanom fleet score` with 1 and 2 workers, through the library in
this process inside a Ray session started beforehand (the engine's start-up is timed apart) and
as the command. The engine's overhead per clip is the workers' time not spent in a clip's
scoring (decoding, models, files, the model's loading) over the clips; scaling efficiency is the
2-worker rate over twice the 1-worker rate.

torchrun: UCSD Ped1's 34 training clips (extracted once), the default config, trained by 1 process
(torch's threads), 1 process with 1 thread, and 2 processes of 1 thread (DistributedDataParallel,
gloo) through the same train() as `vidanom train`; time per optimiser step of each stage (median
over the steps between two progress reports, evaluations included) and the micro AUROC of the 36
test clips.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from throughput import StageClock, make_clip, print_table

from vidanom import results, training
from vidanom.config import ProjectConfig, fixed_steps, with_overrides
from vidanom.distributed import from_env
from vidanom.fleet.engine import Engine, session
from vidanom.fleet.manifest import read_manifest
from vidanom.fleet.scoring import score_fleet
from vidanom.project import Project

CAMERAS = ("north", "south", "gate")
FPS = 25
DAY = 24 * 3600


# -- the fleet's footage -----------------------------------------------------------------------------


def make_site(work: Path, clips: int, seconds: float, steps: int) -> tuple[Path, int]:
    """Footage, trained projects and a manifest of the cameras → (manifest, frames to score)."""
    made = []
    for i in range(clips):
        path = work / "made" / f"clip{i:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        made.append(path if path.exists() else make_clip(path, seconds, seed=i))
    train_clip = work / "made" / "train.mp4"
    if not train_clip.exists():
        make_clip(train_clip, 20.0, seed=99)
    template = work / "template"
    if not template.exists():
        cfg = with_overrides(ProjectConfig(), train=fixed_steps(steps))
        training.train(Project.init(template, cfg), [train_clip], device=torch.device("cpu"))
    lines = []
    for camera in CAMERAS:
        folder = work / "footage" / camera
        folder.mkdir(parents=True, exist_ok=True)
        for clip in made:  # the same footage at every camera: what is measured is the work, not the content
            if not (folder / clip.name).exists():
                os.link(clip, folder / clip.name)
        if not (work / "projects" / camera).exists():
            shutil.copytree(template, work / "projects" / camera)
        lines.append(f'[cameras.{camera}]\nproject = "projects/{camera}"\nscore = "footage/{camera}/*.mp4"\n')
    manifest = work / "fleet.toml"
    manifest.write_text("\n".join(lines))
    return manifest, len(CAMERAS) * clips * int(round(seconds * FPS))


def clear_scores(work: Path) -> None:
    for camera in CAMERAS:
        for f in (work / "projects" / camera / "scores").iterdir():
            f.unlink()


def command(args: list[str]) -> float:
    """Wall seconds of one vidanom command in a fresh interpreter."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vidanom", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"vidanom {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - t0


def sequential(work: Path) -> float:
    clear_scores(work)
    t0 = time.perf_counter()
    for camera in CAMERAS:
        for clip in sorted((work / "footage" / camera).glob("*.mp4")):
            command(["score", str(clip), "--device", "cpu", "-p", str(work / "projects" / camera)])
    return time.perf_counter() - t0


def fleet_library(manifest: Path, workers: int) -> dict[str, float]:
    """fleet score through the library in a Ray session of its own: wall, engine start, worker busy time."""
    t0 = time.perf_counter()
    with session(Engine()):
        started = time.perf_counter() - t0
        r = score_fleet(read_manifest(manifest), Engine(workers=workers), force=True)
    assert not r.failed and not r.problems, (r.failed, r.problems)
    busy = sum(c.seconds for c in r.clips)
    return {
        "wall": r.seconds,
        "engine_start": started,
        "clips": len(r.clips),
        "frames": sum(c.frames for c in r.clips),
        "busy": busy,
        "loading": sum(c.loading for c in r.clips),
        "overhead_per_clip": (workers * r.seconds - busy) / len(r.clips),
    }


# -- one model, several processes --------------------------------------------------------------------


def ddp_worker(root: Path, timings: Path) -> None:
    """What each process runs under torchrun: the library's train(), timed on rank 0."""
    group, clock = from_env(), StageClock()
    project = Project.open(root)
    train_progress = clock if group is None or group.main else (lambda *a: None)
    training.train(project, device=torch.device("cpu"), progress=train_progress, group=group)
    if group is None or group.main:
        timings.write_text(json.dumps(clock.events))


def step_ms(events: list[list[float]]) -> float:
    """Median milliseconds per step between consecutive progress reports (one per step)."""
    steps = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(events, events[1:]) if b[1] > a[1]]
    return 1000 * statistics.median(steps)


def ddp_run(work: Path, data: Path, name: str, procs: int, threads: int | None) -> dict[str, float]:
    template = work / "ped1-template"
    if not template.exists():
        training.extract(Project.init(template), [data / "train"])
    root = work / f"ped1-{name}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(template, root)
    timings = work / f"timings-{name}.json"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, __file__, "--ddp-worker", str(root), str(timings)], env=env, capture_output=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{proc.stdout.decode()}{proc.stderr.decode()}")
    events = json.loads(timings.read_text())
    project = Project.open(root)
    info = project.versions()[-1]
    results.score(project, data / "test")
    auroc = results.evaluate(project, data / "labels.json")["auroc"]
    return {
        "wall": wall,
        "vae_steps": info["vae"]["steps"],
        "mdn_steps": info["mdn"]["steps"],
        "vae_ms": step_ms(events["vae"]),
        "mdn_ms": step_ms(events["mdn"]),
        "auroc": auroc,
        "psnr": info["psnr"],
    }


# -- the tables --------------------------------------------------------------------------------------


def scoring_table(frames: int, clips: int, seq: float, fleet: dict[int, dict], cli: dict[int, float]) -> None:
    rows = [["`vidanom score` per clip, one after the other", f"{clips / seq:.2f}", f"{frames / seq:.0f}", "", ""]]
    for n, r in fleet.items():
        eff = f"{fleet[n]['rate'] / (n * fleet[1]['rate']):.2f}" if 1 in fleet else ""
        rows.append(
            [
                f"`fleet score`, {n} worker(s), library (engine started: {r['engine_start']:.1f} s)",
                f"{r['clips'] / r['wall']:.2f}",
                f"{r['rate']:.0f}",
                f"{1000 * r['overhead_per_clip']:.0f}",
                eff,
            ]
        )
        rows.append(
            [
                f"`vidanom fleet score --workers {n}`, the command",
                f"{clips / cli[n]:.2f}",
                f"{frames / cli[n]:.0f}",
                "",
                "",
            ]
        )
    print_table(
        f"{clips} clips of 720p, {frames} frames",
        ["", "clips/s", "frames/s", "engine ms/clip", "scaling"],
        rows,
    )


def paper_table(rate: float, cameras: int, hours: float) -> None:
    frames = cameras * hours * 3600 * FPS
    machines = frames / (rate * DAY) * 24 / hours
    print(
        f"\n{cameras} cameras × {hours:g} h at {FPS} fps = {frames / 1e6:.0f} M frames; at {rate:.0f} frames/s "
        f"a machine, keeping up takes {machines:.1f} machines"
    )
    rows = [[str(n), f"{frames / (n * rate) / 3600:.1f} h"] for n in (1, 4, 8, 16, 32, 64)]
    print_table("on paper: N such machines (linear scaling assumed)", ["machines", f"{hours:g} h of footage in"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ucsd_ped1")
    ap.add_argument("--clips", type=int, default=8, help="clips per camera")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    ap.add_argument("--steps", type=int, default=300, help="training steps of the cameras' small models")
    ap.add_argument("--skip-ddp", action="store_true", help="only the scoring part")
    ap.add_argument("--skip-scoring", action="store_true", help="only the torchrun part")
    ap.add_argument("--workdir", type=Path, help="keep clips and projects here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--ddp-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_worker:
        ddp_worker(*args.ddp_worker)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vidanom-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    out: dict[str, object] = {}
    if not args.skip_scoring:
        manifest, frames = make_site(work, args.clips, args.seconds, args.steps)
        clips = len(CAMERAS) * args.clips
        seq = sequential(work)
        print(f"sequential: {seq:.1f} s", flush=True)
        fleet, cli = {}, {}
        for n in (1, 2):
            fleet[n] = fleet_library(manifest, n)
            fleet[n]["rate"] = fleet[n]["frames"] / fleet[n]["wall"]
            cli[n] = command(["fleet", "score", str(manifest), "--workers", str(n), "--force"])
            print(f"{n} worker(s): {fleet[n]}, command {cli[n]:.1f} s", flush=True)
        scoring_table(frames, clips, seq, fleet, cli)
        paper_table(max(r["rate"] for r in fleet.values()), 200, 24)
        out["scoring"] = {"sequential": seq, "fleet": fleet, "command": cli, "frames": frames, "clips": clips}
    if not args.skip_ddp:
        runs = {
            "1 process": ddp_run(work, args.data, "p1", 1, None),
            "1 process, 1 thread": ddp_run(work, args.data, "p1t1", 1, 1),
            "2 processes (DDP)": ddp_run(work, args.data, "p2", 2, 1),
        }
        rows = [
            [
                k,
                f"{r['vae_ms']:.1f}",
                f"{r['mdn_ms']:.1f}",
                f"{r['vae_steps']}+{r['mdn_steps']}",
                f"{r['wall']:.0f}",
                f"{r['psnr']:.2f}",
                f"{r['auroc']:.3f}",
            ]
            for k, r in runs.items()
        ]
        header = ["Ped1, default config", "VAE ms/step", "MDN ms/step", "steps", "train s", "PSNR", "micro AUROC"]
        print_table("one model, torchrun", header, rows)
        out["ddp"] = runs
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
