"""The latent-diffusion autoencoder objective: KL, hinge losses, the adaptive GAN weight, the discriminator start."""

import pytest
import torch
from torch import nn

from custom_pipelines.models.vae_losses import (
    AutoencoderLoss,
    adaptive_gan_weight,
    discriminator_factor,
    hinge_discriminator_loss,
    hinge_generator_loss,
    kl_divergence,
)


def test_kl_of_a_standard_normal_posterior_is_zero_and_positive_otherwise():
    zeros = torch.zeros(3, 4, 2, 2)
    torch.testing.assert_close(kl_divergence(zeros, zeros), torch.zeros(3))
    mean = torch.full((1, 4, 2, 2), 2.0)
    assert kl_divergence(mean, zeros[:1]).item() == pytest.approx(0.5 * 4.0 * 16)  # ½ Σ μ²


def test_hinge_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # real: max(0, 1-2)=0, max(0, 0.5)=0.5 → 0.25; fake: max(0, 1-2)=0, max(0, 1)=1 → 0.5
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.SiLU(), nn.Conv2d(3, 1, 3, padding=1))
    last = decoder[2].weight
    x = torch.randn(2, 2, 4, 4)
    out = decoder(x)
    rec, gan = out.abs().mean(), -(out * torch.randn_like(out)).mean()
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last, retain_graph=True)[0]
    weight = adaptive_gan_weight(rec, gan, last)
    assert weight.item() == pytest.approx((g_rec.norm() / (g_gan.norm() + 1e-4)).item(), rel=1e-6)
    assert not weight.requires_grad and last.grad is None  # detached, nothing accumulated
    assert adaptive_gan_weight(rec * 1e6, gan * 1e-12, last).item() == 1e4  # clamped


def test_discriminator_start():
    assert [discriminator_factor(s, 3) for s in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]
    torch.manual_seed(0)
    vae_out = nn.Conv2d(1, 1, 3, padding=1)
    disc = nn.Conv2d(1, 1, 3)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    rec = vae_out(x)
    zeros = torch.zeros(2, 4, 2, 2)
    loss = AutoencoderLoss(disc_start=3)
    before, logs = loss.autoencoder_loss(x, rec, zeros, zeros, step=2, discriminator=disc, last_layer=vae_out.weight)
    assert "g_loss" not in logs and before.item() == pytest.approx(logs["rec_loss"].item())
    after, logs = loss.autoencoder_loss(x, rec, zeros, zeros, step=3, discriminator=disc, last_layer=vae_out.weight)
    expected = logs["rec_loss"] + 0.5 * logs["adaptive_weight"] / 0.5 * logs["g_loss"]
    assert after.item() == pytest.approx(expected.item(), rel=1e-5) and "g_loss" in logs
    d_before, _ = loss.discriminator_loss(disc, x, rec, step=2)
    assert d_before.item() == 0.0


def test_perceptual_term_keeps_its_gradient():
    """The trap of diffusers' research script (LPIPS under no_grad): ours reaches the reconstruction."""
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    rec = torch.zeros_like(x, requires_grad=True)
    loss = AutoencoderLoss(ssim_weight=0.0, perceptual=lambda a, b: (a - b).pow(2).flatten(1).sum(1))
    terms = loss.reconstruction(x, rec)
    (grad,) = torch.autograd.grad(terms["perceptual"], rec)
    torch.testing.assert_close(grad, -2 * x / 2)  # mean over the batch of 2


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        AutoencoderLoss(kl_weight=-1.0)


def test_lpips_is_opt_in_and_never_downloads(tmp_path):
    from custom_pipelines.models.vae_losses import load_lpips

    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_lpips(str(tmp_path / "alexnet.safetensors"))
    with pytest.raises(ValueError, match="net must be 'alex' or 'vgg'"):
        load_lpips(str(tmp_path / "alexnet.safetensors"), net="squeeze")
    try:
        import lpips  # noqa: F401
    except ImportError:
        weights = tmp_path / "alexnet.safetensors"
        weights.write_bytes(b"")
        with pytest.raises(ValueError, match="pip install lpips"):
            load_lpips(str(weights))
