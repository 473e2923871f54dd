"""One model trained by two CPU processes under torchrun (DistributedDataParallel over gloo): rank 0
alone writes, the model is as good as a single process's, and --resume continues a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Clips, invoke, make_project, tiny_config

from vidanom import distributed, fitting
from vidanom.detector import Detector
from vidanom.project import Project

STEPS = ("--steps", "16", "--seed", "0", "--device", "cpu")


def torchrun(*args: str | Path, procs: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=procs -m vidanom ARGS`, on loopback, one torch thread a process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    return subprocess.run(
        [*cmd, "-m", "vidanom", *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


def version_info(root: Path, name: str = "v0001") -> dict:
    return json.loads((root / "models" / name / "version.json").read_text())


def test_the_group_comes_from_torchruns_variables():
    assert distributed.from_env({}) is None and distributed.from_env({"WORLD_SIZE": "1"}) is None
    group = distributed.from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"})
    assert group == distributed.Group(1, 3, 1) and not group.main
    with pytest.raises(Exception, match="RANK 4"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("n, world", [(64, 2), (16, 3), (7, 4)])
def test_the_ranks_parts_make_up_the_batch(n, world):
    parts = [list(range(n))[distributed.part(distributed.Group(r, world, r), n)] for r in range(world)]
    assert sum(parts, []) == list(range(n)) and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.part(None, n) == slice(None)


def test_two_processes_train_one_model_as_good_as_one(tmp_path: Path, clips: Clips):
    cfg = tiny_config(train={"vae_steps": 16, "mdn_steps": 16, "eval_every": 4})
    single, ddp = make_project(tmp_path / "single", cfg), make_project(tmp_path / "ddp", cfg)
    res = invoke("train", clips.folder, *STEPS, "-p", single)
    assert res.exit_code == 0, res.output
    run = torchrun("train", clips.folder, *STEPS, "-p", ddp)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("model v0001:") == 1  # rank 0 reports, the other rank says nothing
    project = Project.open(ddp)
    assert project.current_version() == "v0001" and [v["version"] for v in project.versions()] == ["v0001"]
    assert not project.partial_dir.exists() and not (ddp / "lock").exists()
    assert not list(ddp.rglob(".*.tmp")) and not list((ddp / "models").glob(".staging-*"))
    one, two = version_info(single), version_info(ddp)
    assert two["vae"]["steps"] == one["vae"]["steps"] == 16 and two["mdn"]["steps"] == 16
    assert two["psnr"] == pytest.approx(one["psnr"], abs=1.0)
    assert two["mdn"]["nll"] == pytest.approx(one["mdn"]["nll"], abs=0.1)
    res = invoke("score", clips.anomalous, "--device", "cpu", "-p", ddp)  # an ordinary, scoring version
    assert res.exit_code == 0, res.output


def interrupt_mdn_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """A real SIGINT while the LSTM-MDN draws the batch of optimiser step `step` (as Ctrl-C would)."""
    real, calls, normal = fitting.window_batch, [-1], []  # the held-out windows are drawn first

    def wrapped(latents, starts, seq_len):
        normal[:] = normal or [seq_len]  # the held-out windows' length: a step's own
        if seq_len == normal[0]:  # made-up fast windows, cut longer, are drawn beside a step's: not counted
            if calls[0] == step:
                os.kill(os.getpid(), signal.SIGINT)
            calls[0] += 1
        return real(latents, starts, seq_len)

    monkeypatch.setattr(fitting, "window_batch", wrapped)


def test_torchrun_resumes_an_interrupted_run(tmp_path: Path, clips: Clips, monkeypatch: pytest.MonkeyPatch):
    cfg = tiny_config(train={"vae_steps": 16, "mdn_steps": 16, "eval_every": 4})
    reference, root = make_project(tmp_path / "reference", cfg), make_project(tmp_path / "proj", cfg)
    assert invoke("train", clips.folder, *STEPS, "-p", reference).exit_code == 0
    with monkeypatch.context() as m:
        interrupt_mdn_at(m, step=3)
        res = invoke("train", clips.folder, *STEPS, "-p", root)
    assert res.exit_code == 130, res.output
    part = root / "models" / ".partial"
    assert torch.load(part / "mdn.pt", weights_only=True)["fitting"]["step"] == 4
    run = torchrun("train", *STEPS, "--resume", "-p", root)
    assert run.returncode == 0, run.stdout + run.stderr
    assert Project.open(root).current_version() == "v0001" and not part.exists()
    # the β-VAE had finished: its checkpoint was taken as it is, so it is the uninterrupted run's
    done, ref = Detector.load(root), Detector.load(reference)
    for key, value in ref.vae.state_dict().items():
        torch.testing.assert_close(done.vae.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert version_info(root)["mdn"]["steps"] == 16


def test_update_refuses_torchrun(trained_project: Path, clips: Clips, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = invoke("update", clips.normal_a, "--steps", "4", "--device", "cpu", "-p", trained_project)
    assert res.exit_code == 2 and "torchrun" in res.output
