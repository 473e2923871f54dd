"""The LSTM-MDN: mixture likelihood against torch.distributions, sampling, dreaming, carried state."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vidanom import distributed, fitting
from vidanom.mdn import LSTMMDN, MDNConfig, around, change, mdn_nll, neighbours, sample_mixture


def reference_nll(target, log_pi, mu, log_sigma):
    mix = MixtureSameFamily(Categorical(logits=log_pi), Independent(Normal(mu, log_sigma.exp()), 1))
    return -mix.log_prob(target)


def random_mixture(shape: tuple[int, ...], k: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.log_softmax(torch.randn(*shape, k, generator=g), -1)
    mu = torch.randn(*shape, k, d, generator=g)
    log_sigma = torch.randn(*shape, k, d, generator=g) * 0.5
    target = torch.randn(*shape, d, generator=g)
    return target, log_pi, mu, log_sigma


@pytest.mark.parametrize("shape", [(3, 5), (1, 5), (3, 1), (1, 1), (4,), (1,)])
def test_mdn_nll_matches_mixture_same_family(shape):
    target, log_pi, mu, log_sigma = random_mixture(shape, k=4, d=3)
    got = mdn_nll(target, log_pi, mu, log_sigma)
    assert got.shape == shape  # a batch or time axis of length one is never squeezed away
    torch.testing.assert_close(got, reference_nll(target, log_pi, mu, log_sigma), rtol=1e-5, atol=1e-5)


def test_mdn_nll_of_a_single_gaussian_by_hand():
    target, mu, log_sigma = torch.tensor([[0.7]]), torch.tensor([[[0.2]]]), torch.tensor([[[math.log(0.5)]]])
    got = mdn_nll(target, torch.zeros(1, 1), mu, log_sigma)
    by_hand = 0.5 * ((0.7 - 0.2) / 0.5) ** 2 + math.log(0.5) + 0.5 * math.log(2 * math.pi)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)


def test_sample_mixture_shape_and_generator():
    _, log_pi, mu, log_sigma = random_mixture((6,), k=3, d=2)
    a = sample_mixture(log_pi, mu, log_sigma, 1.0, torch.Generator().manual_seed(1))
    b = sample_mixture(log_pi, mu, log_sigma, 1.0, torch.Generator().manual_seed(1))
    assert a.shape == (6, 2)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("temperature", [0.0, 1e-10])
def test_sample_mixture_at_zero_temperature_is_the_dominant_mean(temperature):
    _, _, mu, log_sigma = random_mixture((5,), k=3, d=2, seed=2)
    dominant = torch.tensor([0, 2, 1, 2, 0])
    log_pi = torch.log_softmax(torch.full((5, 3), -0.5).scatter(1, dominant[:, None], 0.0), -1)  # not one-hot
    z = sample_mixture(log_pi, mu, log_sigma, temperature, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, mu[torch.arange(5), dominant], rtol=0, atol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sample_mixture_statistics(temperature):
    # two far-apart components: the sample's side tells the component, its spread the (tempered) sigma
    n = 20_000
    log_pi = torch.log(torch.tensor([0.8, 0.2])).expand(n, 2)
    mu = torch.tensor([[-10.0], [10.0]]).expand(n, 2, 1)
    log_sigma = torch.log(torch.tensor([[0.5], [1.0]])).expand(n, 2, 1)
    z = sample_mixture(log_pi, mu, log_sigma, temperature, torch.Generator().manual_seed(0))[:, 0]
    expect_p = torch.softmax(torch.log(torch.tensor([0.8, 0.2])) / temperature, 0)
    left = z < 0
    assert left.float().mean().item() == pytest.approx(expect_p[0].item(), abs=0.015)
    assert z[left].std().item() == pytest.approx(0.5 * math.sqrt(temperature), rel=0.05)
    assert z[~left].std().item() == pytest.approx(1.0 * math.sqrt(temperature), rel=0.05)
    assert z[left].mean().item() == pytest.approx(-10.0, abs=0.05)


def tiny_mdn(seed: int = 0, context: str = "none") -> LSTMMDN:
    torch.manual_seed(seed)
    cfg = MDNConfig(latent_dim=3, cells=6, cols=3, hidden=12, mixtures=4, cell_embedding=5, context=context)
    return LSTMMDN(cfg).eval()


def test_forward_shapes_and_normalised_weights():
    mdn = tiny_mdn()
    z, cells = torch.randn(6, 9, 3), torch.arange(6)
    log_pi, mu, log_sigma, (h, c, last) = mdn(z, cells)
    assert log_pi.shape == (6, 9, 4)
    assert mu.shape == log_sigma.shape == (6, 9, 4, 3)
    assert h.shape == c.shape == (1, 6, 12)
    torch.testing.assert_close(last, z[:, -1])  # the last latent read: the next chunk's first change needs it
    torch.testing.assert_close(log_pi.logsumexp(-1), torch.zeros(6, 9), atol=1e-6, rtol=0)


def test_cell_embedding_makes_predictions_depend_on_the_cell():
    mdn = tiny_mdn()
    z = torch.randn(1, 4, 3).expand(2, 4, 3)
    _, mu, _, _ = mdn(z, torch.tensor([0, 5]))
    assert not torch.allclose(mu[0], mu[1])


@pytest.mark.parametrize("context", ["none", "delta", "both"])
def test_state_carried_over_two_chunks_equals_one_pass(context):
    mdn = tiny_mdn(context=context)
    z, cells = torch.randn(12, 11, 3), torch.arange(6).repeat(2)  # two grids of 2 × 3 cells
    with torch.no_grad():
        full = mdn(z, cells)
        first = mdn(z[:, :4], cells)
        second = mdn(z[:, 4:], cells, first[3])
    for i in range(3):
        torch.testing.assert_close(torch.cat([first[i], second[i]], 1), full[i], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second[3][0], full[3][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second[3][1], full[3][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second[3][2], full[3][2])
    # and without the state the second chunk is predicted differently: the state carries information
    assert not torch.allclose(mdn(z[:, 4:], cells)[1], full[1][:, 4:])


@pytest.mark.parametrize(
    "delta,residual,context",
    [(True, True, "none"), (True, False, "none"), (False, True, "none"), (False, False, "none"), (True, True, "both")],
)
def test_inputs_and_means_as_configured(delta, residual, context):
    torch.manual_seed(1)
    cfg = MDNConfig(latent_dim=3, cells=6, cols=2, hidden=12, mixtures=4, cell_embedding=5, delta=delta)
    mdn = LSTMMDN(replace(cfg, residual=residual, context=context)).eval()
    assert mdn.lstm.input_size == 3 * (2 if delta else 1) + 5 + (48 if context == "both" else 0)
    with torch.no_grad():
        mdn.head.weight.zero_()
        mdn.head.bias.zero_()
        z = torch.randn(6, 9, 3)
        _, mu, _, _ = mdn(z, torch.arange(6))
    # with a silent head the means are the current latent (residual) or zero: "nothing changes" is the default
    expected = z[:, :, None].expand(6, 9, 4, 3) if residual else torch.zeros(6, 9, 4, 3)
    torch.testing.assert_close(mu, expected)


def test_the_change_input_reads_the_step_before():
    torch.manual_seed(2)
    mdn = LSTMMDN(MDNConfig(latent_dim=3, cells=6, hidden=12, mixtures=4, cell_embedding=5, delta=True)).eval()
    z = torch.randn(6, 5, 3)
    moved = z.clone()
    moved[:, 1] += 1.0  # the same latent at step 2, reached from elsewhere
    with torch.no_grad():
        a, b = mdn(z, torch.arange(6))[1], mdn(moved, torch.arange(6))[1]
    assert not torch.allclose(a[:, 2], b[:, 2], atol=1e-4)  # the change z[2] - z[1] differs, so does the prediction
    torch.testing.assert_close(a[:, 0], b[:, 0])  # before it nothing differs


# -- what the neighbours show (mdn.context) ------------------------------------------------------


def test_neighbours_are_the_eight_cells_around_in_reading_order():
    x = torch.randn(24, 3, 2)  # two grids of 3 × 4 cells, 3 steps, 2 features
    grid = torch.nn.functional.pad(x.view(2, 3, 4, 3, 2), (0, 0, 0, 0, 1, 1, 1, 1))  # a border of zeros
    out = neighbours(x, around(3, 4)).view(2, 3, 4, 3, 2, 8)
    for n, r, c in [(1, 1, 1), (0, 0, 0), (1, 2, 3)]:
        ring = [grid[n, r + dr, c + dc] for dr in range(3) for dc in range(3) if (dr, dc) != (1, 1)]
        torch.testing.assert_close(out[n, r, c], torch.stack(ring, -1))  # (T, F, 8)
    with pytest.raises(ValueError, match="whole grids"):
        neighbours(x[:20], around(3, 4))


def test_a_cell_reads_only_its_neighbours_changes():
    mdn = tiny_mdn(context="delta")  # a grid of 2 × 3 cells
    z = torch.randn(6, 5, 3)
    moved = z.clone()
    moved[2, 1:] += 1.0  # cell 2 (top right) jumps at step 1
    with torch.no_grad():
        a, b = mdn(z, torch.arange(6))[1], mdn(moved, torch.arange(6))[1]
    for cell in (1, 4, 5):  # its neighbours predict step 1 differently, as the jump is a change around them
        assert not torch.allclose(a[cell, 1], b[cell, 1], atol=1e-4)
    for cell in (0, 3):  # two columns away: untouched
        torch.testing.assert_close(a[cell], b[cell])


def _fit_pulses(context: str, steps: int = 300) -> float:
    """A pulse crossing a row of 4 cells, one cell a step, from a random time: the NLL of its arrival in
    each cell after the first, held out, after `steps` Adam steps."""
    torch.manual_seed(0)
    mdn = LSTMMDN(MDNConfig(latent_dim=1, cells=4, cols=4, hidden=16, mixtures=2, cell_embedding=2, context=context))
    opt = torch.optim.Adam(mdn.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)

    t, cell = torch.arange(20).view(1, 1, 20), torch.arange(4).view(1, 4, 1)

    def pulses(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        arrival = t == torch.randint(2, 12, (n, 1, 1), generator=gen) + cell  # (n, 4, 20)
        z = arrival.float() + 0.05 * torch.randn(n, 4, 20, generator=gen)
        return z.reshape(n * 4, 20, 1), arrival

    cells = torch.arange(4).repeat(16)
    for _ in range(steps):
        z, _ = pulses(16)
        log_pi, mu, log_s, _ = mdn(z[:, :-1], cells)
        opt.zero_grad()
        mdn_nll(z[:, 1:], log_pi, mu, log_s).mean().backward()
        opt.step()
    with torch.no_grad():
        z, arrival = pulses(16)
        nll = mdn_nll(z[:, 1:], *mdn(z[:, :-1], cells)[:3]).view(16, 4, 19)
    return float(nll[:, 1:][arrival[:, 1:, 1:]].mean())


def test_the_neighbours_changes_make_a_passing_pulse_predictable():
    alone, beside = _fit_pulses("none"), _fit_pulses("delta")
    assert beside < alone - 2.0  # each cell's pulse arrives a step after its left neighbour's: no surprise


def test_each_rank_gets_its_windows_with_the_context_of_the_whole_grids():
    mdn = tiny_mdn(context="both")
    grids = torch.arange(6).repeat(2)  # two whole grids of 6 cells a batch
    batches = [(torch.randn(12, 9, 3), grids), (torch.randn(12, 7, 3), grids)]
    z, cells, ctx, first = fitting._rank_share(mdn, batches, None)
    assert z.shape == (24, 7, 3) and first == 12  # cut to the shortest
    assert ctx is not None
    torch.testing.assert_close(ctx, torch.cat([mdn.context(w[:, :6], change(w[:, :6])) for w, _ in batches]))
    # three ranks: 4 rows of each batch apiece, less than a grid, each with the context of the whole grid
    parts = [fitting._rank_share(mdn, batches, distributed.Group(r, 3, r)) for r in range(3)]
    for k in range(2):
        for i, whole in enumerate((z, cells, ctx)):
            shares = torch.cat([p[i][4 * k : 4 * k + 4] for p in parts])
            torch.testing.assert_close(shares, whole[12 * k : 12 * k + 12])
    assert [p[3] for p in parts] == [4, 4, 4]


def test_dream_shapes_and_first_step():
    mdn = tiny_mdn()
    first, cells = torch.randn(4, 3), torch.tensor([0, 1, 5, 5])
    out = mdn.dream(first, cells, steps=6, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 7, 3)
    torch.testing.assert_close(out[:, 0], first)
    assert mdn.dream(first, cells, steps=0).shape == (4, 1, 3)


def test_cold_dream_follows_the_dominant_mean_given_the_whole_past():
    # at temperature 0 each step must be the dominant component's mean of the mixture predicted from
    # everything dreamt so far: this checks that dream() carries the LSTM state from step to step
    mdn = tiny_mdn(seed=3)
    first, cells = torch.randn(3, 3), torch.tensor([0, 2, 4])
    seq = mdn.dream(first, cells, steps=5, temperature=0.0)
    with torch.no_grad():
        log_pi, mu, _, _ = mdn(seq[:, :-1], cells)
    best = log_pi.argmax(-1)  # (B, T)
    expected = mu.gather(2, best[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    torch.testing.assert_close(seq[:, 1:], expected, rtol=1e-4, atol=1e-5)


# -- made-up fast windows (fitting.fast_margin) ---------------------------------------------------


def test_fast_windows_keep_every_skip_th_latent_of_a_clip_long_enough():
    # latents whose value is their frame number: a fast window's steps are its skip
    lengths, seq_len = [40, 100], 8
    latents = [torch.arange(n, dtype=torch.float32).expand(3, n)[..., None].expand(3, n, 2).clone() for n in lengths]
    fast = fitting.fast_starts(lengths, seq_len)
    assert set(fast) == {2, 3, 4}
    assert set(fitting.fast_starts([20, 30], seq_len)) == {2, 3}  # 4 · 8 + 1 latents fit neither clip
    seen = set()
    for i in range(20):
        z, cells = fitting.fast_batch(latents, fast, seq_len, np.random.default_rng(i))
        assert z.shape == (fitting.MDN_WINDOWS * 3, seq_len + 1, 2)
        steps = z[:, 1:, 0] - z[:, :-1, 0]
        skip = int(steps[0, 0])
        assert (steps == skip).all() and skip in (2, 3, 4)
        assert cells.tolist() == [0, 1, 2] * fitting.MDN_WINDOWS
        seen.add(skip)
    assert seen == {2, 3, 4}


def test_fast_margin_is_the_hinge_by_hand():
    fast = torch.tensor([-1.0, 0.2, 3.0])
    got = fitting.fast_margin(fast, torch.tensor(0.0), 0.5)
    assert got.item() == pytest.approx((1.5 + 0.3 + 0.0) / 3)


def _fit_waves(margin: float, steps: int = 600) -> tuple[float, float]:
    """An LSTM-MDN fitted to slow waves under a little noise with the given margin (its last weights kept)
    → its NLL per dimension of normal windows and of every-3rd-latent windows of the same waves."""
    cfg = tiny_config(train={"mdn_steps": steps, "eval_every": steps, "mdn_fast_margin": margin})
    gen = torch.Generator().manual_seed(0)

    def waves(n: int) -> torch.Tensor:  # (cells, n, D): a slow wave per cell, under a little noise
        t = torch.arange(n, dtype=torch.float32)[None, :, None]
        phase = torch.arange(4, dtype=torch.float32)[:, None, None]
        return torch.sin(t / 20 + phase + torch.tensor([0.0, 1.5])) + 0.05 * torch.randn(4, n, 2, generator=gen)

    clips = [waves(150), waves(150)]
    torch.manual_seed(0)
    mdn = LSTMMDN(MDNConfig(latent_dim=2, cells=4, hidden=16, mixtures=2, cell_embedding=4))
    fitting.fit_mdn(mdn, clips, clips, cfg, torch.device("cpu"))
    test = waves(3 * 64 + 1)
    out = []
    with torch.no_grad():
        for z in (test[:, :65], test[:, ::3]):
            log_pi, mu, log_s, _ = mdn(z[:, :-1], torch.arange(4))
            out.append(float(mdn_nll(z[:, 1:], log_pi, mu, log_s).mean()) / 2)
    return out[0], out[1]


def test_the_lstm_mdn_learns_to_find_fast_windows_less_likely():
    normal_off, fast_off = _fit_waves(0.0)
    normal_on, fast_on = _fit_waves(0.5)
    assert fast_on - normal_on > fast_off - normal_off + 0.3
    # the price: normal windows a little less likely (on real footage 0.3-0.45 nats per dimension)
    assert normal_off < normal_on < normal_off + 0.6
