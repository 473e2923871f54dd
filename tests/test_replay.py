"""Continual learning pieces: generative replay through fit_vae, the EWC penalty and its Fisher."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from vidanom.config import FrameConfig, ProjectConfig, TrainConfig, VAEOptions
from vidanom.data import Split
from vidanom.replay import (
    EWCPenalty,
    LatentPrior,
    PriorReplay,
    ReplayDistillation,
    batch_parts,
    carry_prior,
    fisher_diagonal,
    fit_gaussian,
    gaussian_kl,
    replay_share,
)
from vidanom.fitting import fit_vae
from vidanom.vae import BetaVAE, vae_loss

BATCH = 8


def tiny_config() -> ProjectConfig:
    return ProjectConfig(
        frames=FrameConfig(width=8, height=8, channels=1, motion_lag=0),
        vae=VAEOptions(hidden=(4, 4), latent_channels=2, beta=0.5),
        train=TrainConfig(batch_size=BATCH, seed=3),
    )


def tiny_vae(seed: int = 0) -> BetaVAE:
    torch.manual_seed(seed)
    return BetaVAE(tiny_config().vae_config())


class Recorder:
    """Wraps a replay source and keeps what it handed out."""

    def __init__(self, source: PriorReplay) -> None:
        self.source, self.given = source, []

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.source(n, generator)
        self.given.append(x)
        return x


@pytest.mark.parametrize("old_scenes", [1, 2, 3])
def test_replay_takes_its_share_of_every_fit_vae_batch(old_scenes: int) -> None:
    old, new = tiny_vae(0), tiny_vae(1)
    before = {k: v.clone() for k, v in old.state_dict().items()}
    replay = Recorder(PriorReplay(old, frame_channels=1))
    seen: list[torch.Tensor] = []
    new.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    frames = np.random.default_rng(0).integers(0, 256, (5 * BATCH, 8, 8, 1), dtype=np.uint8)
    share = replay_share(old_scenes)
    fit_vae(
        new,
        [frames],
        Split.none([len(frames)]),
        tiny_config(),
        torch.device("cpu"),
        extra=replay,
        extra_share=share,
        steps=5,
    )
    assert len(seen) == len(replay.given) == 5
    for x, r in zip(seen, replay.given):
        assert x.shape[0] == BATCH  # the batch keeps its size: the replayed rows replace new ones
        assert r.shape[0] / x.shape[0] == pytest.approx(share, abs=0.5 / BATCH)
        assert torch.equal(x[BATCH - r.shape[0] :], r)  # the replayed rows are the tail of the batch, unchanged
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


def test_fit_gaussian_is_the_mean_and_covariance_of_the_mean_latents() -> None:
    vae = tiny_vae()
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, chol = fit_gaussian(vae, x.split(64), ridge=0.0)  # batch by batch
    with torch.no_grad():
        mu = vae.encode(x)[0].flatten(1).double().numpy()
    assert mean.shape == (8,) and chol.shape == (8, 8)  # 2 latent channels × a 2×2 grid
    np.testing.assert_allclose(mean.numpy(), mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((chol @ chol.T).numpy(), np.cov(mu, rowvar=False), rtol=1e-4, atol=1e-7)
    assert torch.equal(chol, chol.tril())
    # a latent that never moves still gets a factor, thanks to the ridge
    mean, chol = fit_gaussian(vae, [x[:1].expand(5, -1, -1, -1)])
    assert torch.isfinite(chol).all() and (chol.diagonal() > 0).all()


def test_latent_prior_samples_each_scene_from_its_own_gaussian() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[1.0, 0.0], [0.5, 0.2]])
    prior = LatentPrior.standard([], 2).with_scene("day", torch.tensor([5.0, 5.0]), a)
    prior = prior.with_scene("night", torch.tensor([-5.0, 0.0]), torch.eye(2) * 0.1)
    z = prior.sample(20000, g)
    day = z[:, 0] > 0
    assert day.float().mean() == pytest.approx(0.5, abs=0.02)  # every old scene, an equal part
    torch.testing.assert_close(z[day].mean(0), torch.tensor([5.0, 5.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(z[day].T), a @ a.T, atol=0.03, rtol=0)
    assert (prior.sample(500, g, scene=1)[:, 0] < 0).all()
    assert prior.only(["night"]).scenes == ["night"]
    again = prior.with_scene("day", torch.zeros(2), torch.eye(2))  # a scene learned again replaces its own
    assert again.scenes == ["night", "day"] and torch.equal(again.mean[1], torch.zeros(2))
    back = LatentPrior.from_dict(torch.load(save(prior.to_dict()), weights_only=True))
    assert back.scenes == prior.scenes and torch.equal(back.chol, prior.chol)


def save(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_prior_replay_decodes_the_fitted_gaussians() -> None:
    vae = tiny_vae()
    prior = LatentPrior.standard([], 8).with_scene("a", torch.full((8,), 3.0), torch.eye(8) * 0.5)
    got = PriorReplay(vae, prior=prior, generator=torch.Generator().manual_seed(7))(4)
    z = prior.sample(4, torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(got, vae.decode(z.view(4, 2, 2, 2)))


def test_carry_prior_encodes_old_samples_with_the_new_encoder() -> None:
    old = tiny_vae()
    prior = LatentPrior.standard([], 8).with_scene("a", torch.zeros(8), torch.eye(8))
    prior = prior.with_scene("b", torch.ones(8), torch.eye(8) * 0.3)
    new = tiny_vae()
    with torch.no_grad():
        new.to_stats.bias[:2] += torch.tensor([1.0, -2.0])  # the new latent space: the old one, shifted

    def carry(vae: BetaVAE) -> LatentPrior:
        return carry_prior(PriorReplay(old, 1, prior, generator=torch.Generator().manual_seed(3)), vae, 256, 100)

    same, moved = carry(old), carry(new)
    assert moved.scenes == ["a", "b"]
    shift = torch.tensor([1.0, -2.0]).repeat_interleave(4)  # per channel, over the 2×2 grid
    torch.testing.assert_close(moved.mean - same.mean, shift.expand(2, 8), atol=1e-4, rtol=0)
    torch.testing.assert_close(moved.chol, same.chol, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(same.mean[0], same.mean[1], atol=1e-3)  # each scene its own samples


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


def test_batch_parts_keep_the_batch_at_its_size_and_the_share() -> None:
    for batch in (8, 64):
        for k in range(1, 9):
            share = replay_share(k)
            new, replayed = batch_parts(batch, share)
            assert new + replayed == batch and new >= 1
            assert replayed / batch == pytest.approx(share, abs=0.5 / batch)
    assert batch_parts(64, 0.0) == (64, 0) and batch_parts(4, 0.95) == (1, 3)


def test_fisher_diagonal_matches_per_sample_backward() -> None:
    vae = tiny_vae().double()
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    fisher = fisher_diagonal(vae, [x[:3], x[3:]], beta=0.5)
    by_hand = {k: torch.zeros_like(p) for k, p in vae.named_parameters()}
    for i in range(len(x)):  # one image at a time: the square of its own gradient
        vae.zero_grad()
        recon, mu, logvar = vae(x[i : i + 1], sample=False)
        vae_loss(x[i : i + 1], recon, mu, logvar, 0.5)[0].backward()
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


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu, mu_ref = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    lv, lv_ref = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * lv).exp()), torch.distributions.Normal(mu_ref, (0.5 * lv_ref).exp())
    )
    torch.testing.assert_close(gaussian_kl(mu, lv, mu_ref, lv_ref), ref.flatten(1).sum(1))


def test_replay_distillation_is_zero_for_the_same_model_and_pulls_a_changed_one_back() -> None:
    old = tiny_vae()
    prior = LatentPrior.standard([], 8).with_scene("a", torch.ones(8), torch.eye(8) * 0.3)
    live = tiny_vae()  # the same weights as the frozen copy
    distill = ReplayDistillation(PriorReplay(old, 1, prior, generator=torch.Generator().manual_seed(1)), live, 16)
    assert distill().item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        live.decoder[-1].bias.add_(0.5)  # every output pixel off by 0.5 (before clipping of the target)
        live.to_stats.bias[:2] += 1.0  # and the posterior means of channel 0 moved by 1
    loss = distill()
    assert loss.item() >= 8 * 8 * 0.25  # 64 pixels, each off by 0.5, and the posteriors moved
    loss.backward()
    assert live.decoder[-1].bias.grad is not None and live.to_stats.bias.grad[:2].abs().sum() > 0
    assert all(p.grad is None for p in distill.replay.vae.parameters())  # the frozen copy stays frozen
    only_decoder = ReplayDistillation(distill.replay, live, 16, decoder=1.0, encoder=0.0)
    live.zero_grad()
    only_decoder().backward()
    assert live.to_stats.bias.grad is None or live.to_stats.bias.grad.abs().sum() == 0
