"""Latent scaling: applied once on encode, undone once on decode, measured to give unit-variance latents."""

import pytest
import torch
from diffusers import AutoencoderKL

from custom_pipelines.models.autoencoder import decode_latents, encode_latents, measure_latent_scale


def _vae(**config):
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=2, norm_num_groups=4, **config).eval()


def test_scaling_applied_once_each_way():
    vae = _vae(scaling_factor=0.5, shift_factor=0.25)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        z_raw = vae.encode(x).latent_dist.mode()
        z = encode_latents(vae, x, sample=False)
        assert torch.allclose(z, (z_raw - 0.25) * 0.5)
        assert torch.allclose(decode_latents(vae, z), vae.decode(z_raw).sample, atol=1e-6)


def test_measured_scale_gives_unit_variance_latents():
    vae = _vae()
    batches = [torch.rand(8, 1, 16, 16) * 2 - 1 for _ in range(3)]
    scale, shift = measure_latent_scale(vae, batches, generator=torch.Generator().manual_seed(0))
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    with torch.no_grad():
        z = torch.cat([encode_latents(vae, b, generator=torch.Generator().manual_seed(0)) for b in batches])
    assert z.std().item() == pytest.approx(1.0, abs=0.05)
    if shift is not None:
        assert abs(z.mean().item()) < 0.05


def test_measure_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        measure_latent_scale(_vae(), [])
