"""Continual learning pieces: generative replay through fit_vae, the EWC penalty and its Fisher."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from vidanom.config import FrameConfig, ProjectConfig, TrainConfig, VAEOptions
from vidanom.data import Split
from vidanom.replay import EWCPenalty, PriorReplay, fisher_diagonal, new_batch_size, replay_share
from vidanom.train import fit_vae
from vidanom.vae import BetaVAE, vae_loss

BATCH = 8


def tiny_config() -> ProjectConfig:
    return ProjectConfig(frames=FrameConfig(width=8, height=8, channels=1, motion_lag=0),
                         vae=VAEOptions(hidden=(4, 4), latent_channels=2, beta=0.5),
                         train=TrainConfig(batch_size=BATCH, seed=3))


def tiny_vae(seed: int = 0) -> BetaVAE:
    torch.manual_seed(seed)
    return BetaVAE(tiny_config().vae_config())


class Recorder:
    """Wraps a replay source and keeps what it handed out."""

    def __init__(self, source: PriorReplay) -> None:
        self.source, self.given = source, []

    def __call__(self, n: int) -> torch.Tensor:
        x = self.source(n)
        self.given.append(x)
        return x


@pytest.mark.parametrize("old_scenes", [1, 2, 3])
def test_replay_takes_its_share_of_every_fit_vae_batch(old_scenes: int) -> None:
    old, new = tiny_vae(0), tiny_vae(1)
    before = {k: v.clone() for k, v in old.state_dict().items()}
    replay = Recorder(PriorReplay(old, frame_channels=1))
    seen: list[torch.Tensor] = []
    new.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    frames = np.random.default_rng(0).integers(0, 256, (5 * BATCH, 8, 8, 1), dtype=np.uint8)
    share = replay_share(old_scenes)
    fit_vae(new, [frames], Split([len(frames)]), tiny_config(), torch.device("cpu"), epochs=1,
            extra=replay, extra_share=share)
    assert len(seen) == len(replay.given) == 5
    for x, r in zip(seen, replay.given):
        assert x.shape[0] == BATCH + r.shape[0]
        assert r.shape[0] / x.shape[0] == pytest.approx(share, abs=1 / BATCH)
        assert torch.equal(x[BATCH:], r)  # the replayed rows are the tail of the batch, unchanged
        assert 0.0 <= r.min() and r.max() <= 1.0  # clipped to the frames' range
    assert all(torch.equal(v, before[k]) for k, v in replay.source.vae.state_dict().items())


def test_prior_replay_is_a_frozen_copy() -> None:
    vae = tiny_vae()
    replay = PriorReplay(vae)
    with torch.no_grad():
        next(vae.parameters()).add_(1.0)  # later training of the original must not reach the copy
    x = replay(6)
    assert x.shape == (6, 1, 8, 8) and not x.requires_grad
    assert not any(p.requires_grad for p in replay.vae.parameters())
    assert not torch.equal(next(vae.parameters()), next(replay.vae.parameters()))


def test_replay_share_gives_every_scene_an_equal_part() -> None:
    assert replay_share(0) == 0.0
    assert replay_share(1) == 0.5 and replay_share(1, base=0.3) == pytest.approx(0.3)
    for k in range(1, 9):  # k old scenes + the new one: each gets 1/(k+1) of the batch
        assert replay_share(k) == pytest.approx(k / (k + 1))
    shares = [replay_share(k, base=0.3) for k in range(30)]
    assert all(a <= b for a, b in zip(shares, shares[1:]))
    assert max(shares) == pytest.approx(0.9) and replay_share(100, cap=0.8) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        replay_share(1, base=1.0)


def test_new_batch_size_keeps_the_whole_batch_at_its_size() -> None:
    for batch in (8, 64):
        for k in range(1, 9):
            share = replay_share(k)
            new = new_batch_size(batch, share)
            replayed = int(round(new * share / (1 - share)))  # what fit_vae adds
            assert abs(new + replayed - batch) <= (k + 1) / 2
            assert replayed / (new + replayed) == pytest.approx(share, abs=1 / batch)
    assert new_batch_size(64, 0.0) == 64 and new_batch_size(4, 0.95) == 1


def test_fisher_diagonal_matches_per_sample_backward() -> None:
    vae = tiny_vae().double()
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    fisher = fisher_diagonal(vae, [x[:3], x[3:]], beta=0.5)
    by_hand = {k: torch.zeros_like(p) for k, p in vae.named_parameters()}
    for i in range(len(x)):  # one image at a time: the square of its own gradient
        vae.zero_grad()
        recon, mu, logvar = vae(x[i:i + 1], sample=False)
        vae_loss(x[i:i + 1], recon, mu, logvar, 0.5)[0].backward()
        for k, p in vae.named_parameters():
            by_hand[k] += p.grad.pow(2) / len(x)
    assert set(fisher) == set(by_hand)
    for k in fisher:
        torch.testing.assert_close(fisher[k], by_hand[k], rtol=1e-9, atol=1e-12)
    assert sum(f.sum() for f in fisher.values()) > 0


def moved(vae: BetaVAE, start: dict[str, torch.Tensor], direction: dict[str, torch.Tensor], t: float) -> None:
    with torch.no_grad():
        for k, p in vae.named_parameters():
            p.copy_(start[k] + t * direction[k])


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it() -> None:
    vae = tiny_vae()
    pen = EWCPenalty(vae, strength=10.0)
    assert pen().item() == 0.0  # nothing consolidated yet
    pen.consolidate(fisher_diagonal(vae, [torch.rand(6, 1, 8, 8)], beta=0.5))
    assert pen().item() == 0.0
    start = {k: v.detach().clone() for k, v in vae.named_parameters()}
    direction = {k: torch.randn_like(v) for k, v in start.items()}
    values = []
    for t in (0.001, 0.01, 0.1, 1.0):
        moved(vae, start, direction, t)
        values.append(pen().item())
    assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:]))
    expected = 0.5 * 10.0 * sum((pen.fisher[k] * direction[k].pow(2)).sum() for k in start)
    assert values[-1] == pytest.approx(expected.item(), rel=1e-5)
    pen().backward()  # and it trains: the gradient is λ·F·(θ − θ*)
    for k, p in vae.named_parameters():
        torch.testing.assert_close(p.grad, 10.0 * pen.fisher[k] * direction[k])


def test_ewc_accumulates_fisher_and_survives_a_weights_only_checkpoint() -> None:
    vae = tiny_vae()
    ones = {k: torch.ones_like(v) for k, v in vae.named_parameters()}
    threes = {k: 3 * v for k, v in ones.items()}
    summed, mean = EWCPenalty(vae, 2.0, "sum"), EWCPenalty(vae, 2.0, "mean")
    for pen in (summed, mean):
        pen.consolidate(ones)
        pen.consolidate(threes)
    assert all(torch.equal(f, 4 * ones[k]) for k, f in summed.fisher.items())
    assert all(torch.equal(f, 2 * ones[k]) for k, f in mean.fisher.items())
    buf = io.BytesIO()
    torch.save({"ewc": mean.to_dict()}, buf)
    buf.seek(0)
    other = tiny_vae(1)
    back = EWCPenalty.from_dict(other, torch.load(buf, weights_only=True)["ewc"])
    assert (back.strength, back.accumulate, back.tasks) == (2.0, "mean", 2)
    with torch.no_grad():
        for p, q in zip(vae.parameters(), other.parameters()):
            p.copy_(q)  # the same weights on both models give the same penalty
    assert back().item() == pytest.approx(mean().item()) and back().item() > 0
    with pytest.raises(ValueError):
        EWCPenalty(vae, 1.0, "max")
