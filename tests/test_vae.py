"""The β-VAE module: KL and loss against torch.distributions, shapes, the patch statistic, size checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vidanom.vae import BetaVAE, VAEConfig, error_map, kl_map, patch_means, vae_loss


def small_cfg(**kw) -> VAEConfig:
    base = dict(in_channels=2, height=16, width=24, hidden=(4, 8), latent_channels=3, beta=0.5)
    return VAEConfig(**{**base, **kw})


def test_kl_map_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, 5, 6, generator=g) * 2
    logvar = torch.randn(3, 4, 5, 6, generator=g)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    got = kl_map(mu, logvar)
    assert got.shape == (3, 5, 6)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_kl_map_is_zero_at_the_prior():
    assert torch.count_nonzero(kl_map(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))) == 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("beta", [0.0, 0.37, 2.0])
def test_vae_loss_is_recon_plus_beta_kl(beta, layout):
    g = torch.Generator().manual_seed(1)
    b = 4
    x, recon = (torch.rand(b, 2, 8, 8, generator=g).to(memory_format=layout) for _ in range(2))
    mu, logvar = torch.randn(b, 3, 2, 2, generator=g), torch.randn(b, 3, 2, 2, generator=g)
    loss, rec, kl = vae_loss(x, recon, mu, logvar, beta)
    ref_rec = torch.nn.functional.mse_loss(recon, x, reduction="sum") / b  # summed per image, mean over batch
    ref_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum() / b
    torch.testing.assert_close(rec, ref_rec)
    torch.testing.assert_close(kl, ref_kl)
    torch.testing.assert_close(loss, ref_rec + beta * ref_kl)
    assert loss.dim() == rec.dim() == kl.dim() == 0


@pytest.mark.parametrize("requires_grad", [False, True])
def test_coordinates_are_appended_to_a_channels_last_batch_in_its_layout(requires_grad):
    vae = BetaVAE(VAEConfig(in_channels=2, height=8, width=16, hidden=(4,)))
    x = torch.rand(3, 2, 8, 16).to(memory_format=torch.channels_last).requires_grad_(requires_grad)
    out = vae._with_coords(x)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 16), indexing="ij")
    assert torch.equal(out[:, :2], x) and out.shape == (3, 4, 8, 16)
    assert torch.equal(out[:, 2], ys.expand(3, 8, 16)) and torch.equal(out[:, 3], xs.expand(3, 8, 16))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_error_map_sums_squares_over_channels():
    x = torch.zeros(1, 2, 3, 3)
    recon = torch.zeros(1, 2, 3, 3)
    recon[0, 0, 1, 2], recon[0, 1, 1, 2] = 3.0, -4.0
    err = error_map(x, recon)
    assert err.shape == (1, 3, 3)
    assert err[0, 1, 2] == 25.0 and err.sum() == 25.0


@pytest.mark.parametrize("coords", [True, False])
def test_shapes_of_encode_decode_forward_and_prior(coords):
    torch.manual_seed(0)
    cfg = small_cfg(coords=coords)
    vae = BetaVAE(cfg)
    assert cfg.grid == (4, 6)
    x = torch.rand(5, 2, 16, 24)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 3, 4, 6)
    assert vae.decode(mu).shape == (5, 2, 16, 24)
    recon, mu2, logvar2 = vae(x)
    assert recon.shape == x.shape
    torch.testing.assert_close(mu2, mu)
    assert vae.sample_prior(7).shape == (7, 2, 16, 24)


def test_forward_without_sampling_decodes_the_mean():
    torch.manual_seed(0)
    vae = BetaVAE(small_cfg()).eval()
    x = torch.rand(2, 2, 16, 24)
    with torch.no_grad():
        mean_recon, mu, _ = vae(x, sample=False)
        torch.testing.assert_close(mean_recon, vae.decode(mu))
        torch.testing.assert_close(vae(x, sample=False)[0], mean_recon)  # deterministic
        assert not torch.allclose(vae(x, sample=True)[0], mean_recon)


def test_sample_prior_follows_the_generator():
    torch.manual_seed(0)
    vae = BetaVAE(small_cfg())
    with torch.no_grad():
        a = vae.sample_prior(3, torch.Generator().manual_seed(5))
        b = vae.sample_prior(3, torch.Generator().manual_seed(5))
        c = vae.sample_prior(3, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_patch_means_against_hand_computation():
    err = torch.zeros(1, 4, 6)
    err[0, 1, 1] = 8.0  # in the top-left 2x2 window only
    err[0, 3, 5] = 4.0  # in the bottom-right window only
    got = patch_means(err, 2, 2)
    assert got.shape == (1, 6)
    assert got[0].tolist() == [2.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    overlapping = patch_means(err, 2, 1)  # stride 1: 3 x 5 windows, row-major
    assert overlapping.shape == (1, 15)
    assert overlapping[0, :3].tolist() == [2.0, 2.0, 0.0] and overlapping[0, 14] == 1.0


def test_patch_means_against_numpy_reshape():
    g = torch.Generator().manual_seed(3)
    err = torch.rand(3, 8, 12, generator=g)
    ref = err.numpy().reshape(3, 2, 4, 3, 4).mean((2, 4)).reshape(3, -1)
    np.testing.assert_allclose(patch_means(err, 4, 4).numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("height,width", [(18, 24), (16, 22), (6, 16)])
def test_sizes_not_divisible_by_the_downsampling_raise(height, width):
    with pytest.raises(ValueError, match="not divisible"):
        BetaVAE(small_cfg(height=height, width=width))
