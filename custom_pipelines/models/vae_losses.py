"""The latent-diffusion autoencoder objective (Rombach et al. 2022, App. G; CompVis' `LPIPSWithDiscriminator`),
written as small functions: reconstruction (L1 + an SSIM structural term + optional LPIPS), a KL term toward
N(0, I) with a tiny weight, and a PatchGAN hinge loss whose generator side is weighted adaptively by
‖∇L_rec‖ / ‖∇L_gan‖ on the decoder's last layer (Esser et al. 2021, eq. 7) and switched on at `disc_start`.

Differences from the reference, on purpose:
- Normalisation: CompVis sums the L1 map and the KL over each image, then averages over the batch. Both are divided
  here by the pixel count C·H·W, which keeps their ratio (so `kl_weight` means the same, 1e-6) and makes the loss
  independent of the image size (gradient clipping and logs read the same at 16² and 256²).
- CompVis' learned `logvar` scalar divides the reconstruction term, but the autoencoder's optimizer never holds it,
  so it stays at its initial 0 and the term is the plain reconstruction loss: it is left out.
- The perceptual term keeps its gradient. (diffusers' research `train_autoencoderkl.py` computes its LPIPS term
  under `torch.no_grad()`, so it only shifts the logged number and never trains the decoder.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from custom_pipelines.evaluation.image_quality import ssim_loss

ADAPTIVE_WEIGHT_MAX = 1e4  # CompVis clamps the adaptive weight to [0, 1e4]
ADAPTIVE_WEIGHT_EPS = 1e-4  # added to ‖∇L_gan‖ (CompVis): a zero adversarial gradient gives a finite weight


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per image, (N,): ½ Σ (μ² + σ² − 1 − log σ²) over the latent's elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]) (Lim & Ye 2017; CompVis' `hinge_d_loss`)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """−E[D(x̂)]: the autoencoder's adversarial term under the hinge objective."""
    return -logits_fake.mean()


def discriminator_factor(step: int, disc_start: int, factor: float = 1.0) -> float:
    """`factor` from step `disc_start` on, 0 before (CompVis' `adopt_weight`)."""
    return factor if step >= disc_start else 0.0


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    max_weight: float = ADAPTIVE_WEIGHT_MAX,
    eps: float = ADAPTIVE_WEIGHT_EPS,
) -> torch.Tensor:
    """λ = ‖∇_L L_rec‖ / (‖∇_L L_gan‖ + eps), clamped to [0, max_weight] and detached (Esser et al. 2021, eq. 7), with
    L the decoder's last layer: the adversarial gradient reaching the decoder is as large as the reconstruction's.

    Both losses must depend on `last_layer` through a graph that is kept (`retain_graph`): the caller backpropagates
    the total loss afterwards. `torch.autograd.grad` fills no `.grad` and fires no DDP hook.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], the range SSIM's constants are set for."""
    return (images.float() + 1.0) / 2.0


class VAETrainingForward(nn.Module):
    """x → (x̂, μ, log σ²) in one forward: DDP syncs gradients only through `forward()`, and diffusers'
    `AutoencoderKL.forward` returns the reconstruction without the posterior the KL term needs."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def rewrap(self, vae: nn.Module) -> VAETrainingForward:
        """The same forward around another autoencoder (FSDP's gather builds an unsharded copy this way)."""
        return VAETrainingForward(vae)

    def forward(self, images: torch.Tensor, sample_posterior: bool = True):
        posterior = self.vae.encode(images).latent_dist
        # the posterior sample draws from the global RNG: seeded by accelerate and saved with every checkpoint
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.vae.decode(z).sample, posterior.mean, posterior.logvar

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution: where the adaptive GAN weight compares gradients."""
        return self.vae.decoder.conv_out.weight


@dataclass(frozen=True)
class AutoencoderLoss:
    """The weights of the objective. `perceptual` (optional) is a frozen network `(x, x̂) → (N, ...)` distances on
    [-1, 1] images, e.g. LPIPS (see `load_lpips`); it adds `perceptual_weight` × its mean to the reconstruction."""

    kl_weight: float = 1e-6
    ssim_weight: float = 0.1
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 0
    disc_factor: float = 1.0
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self):
        for name in ("kl_weight", "ssim_weight", "perceptual_weight", "disc_weight", "disc_factor", "disc_start"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def adversarial(self, step: int) -> float:
        """The adversarial terms' factor at `step` (0 before `disc_start`, or always when disc_weight is 0)."""
        return discriminator_factor(step, self.disc_start, self.disc_factor) if self.disc_weight > 0 else 0.0

    def reconstruction(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reconstruction terms (inputs and reconstructions in [-1, 1]): per-pixel L1, 1 − SSIM, LPIPS."""
        terms = {"l1": (inputs.float() - reconstructions.float()).abs().mean()}
        rec = terms["l1"]
        if self.ssim_weight > 0:
            terms["ssim_loss"] = ssim_loss(to_unit_range(reconstructions), to_unit_range(inputs))
            rec = rec + self.ssim_weight * terms["ssim_loss"]
        if self.perceptual is not None and self.perceptual_weight > 0:
            terms["perceptual"] = self.perceptual(inputs, reconstructions).float().mean()
            rec = rec + self.perceptual_weight * terms["perceptual"]
        terms["rec_loss"] = rec
        return terms

    def autoencoder_loss(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        *,
        step: int,
        discriminator: nn.Module | None = None,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_rec + kl_weight·KL/(C·H·W) + factor·λ·disc_weight·L_gan; returns it and its detached parts. The
        discriminator is evaluated only once `step >= disc_start` (before, the term is exactly 0)."""
        terms = self.reconstruction(inputs, reconstructions)
        pixels = inputs[0].numel()
        kl = kl_divergence(mean.float(), logvar.float()).mean() / pixels
        loss = terms["rec_loss"] + self.kl_weight * kl
        logs = {name: value.detach() for name, value in terms.items()} | {"kl": kl.detach()}
        factor = self.adversarial(step)
        if factor > 0:
            if discriminator is None or last_layer is None:
                raise ValueError("the adversarial term needs the discriminator and the decoder's last layer")
            gan = hinge_generator_loss(discriminator(reconstructions))
            weight = self.disc_weight * adaptive_gan_weight(terms["rec_loss"], gan, last_layer)
            loss = loss + factor * weight * gan
            logs |= {"g_loss": gan.detach(), "adaptive_weight": weight}
        logs["vae_loss"] = loss.detach()
        return loss, logs

    def discriminator_loss(
        self, discriminator: nn.Module, inputs: torch.Tensor, reconstructions: torch.Tensor, *, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """factor·hinge(D(x), D(x̂)) on detached images; the logits' means are logged."""
        logits_real = discriminator(inputs.detach())
        logits_fake = discriminator(reconstructions.detach())
        loss = self.adversarial(step) * hinge_discriminator_loss(logits_real, logits_fake)
        return loss, {
            "d_loss": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }


class LPIPSDistance(nn.Module):
    """LPIPS (Zhang et al. 2018) of the `lpips` package as `(x, x̂) → (N,)` on [-1, 1] images, frozen, with the
    backbone (AlexNet / VGG16 features) loaded from a local file. 1-channel images are repeated to RGB."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        if inputs.shape[1] == 1:
            inputs, reconstructions = inputs.repeat(1, 3, 1, 1), reconstructions.repeat(1, 3, 1, 1)
        return self.model(inputs, reconstructions).flatten(1).mean(1)


def load_lpips(backbone_weights: str, net: str = "alex") -> LPIPSDistance:
    """LPIPS with its backbone from `backbone_weights`, a local torchvision `alexnet` / `vgg16` state dict
    (.safetensors, or .pth read with `weights_only=True`), and its linear heads from the `lpips` package.

    Opt-in and offline: `lpips.LPIPS()` as usually called downloads the torchvision backbone from the internet on
    first use; here it is built with `pnet_rand=True` (no download) and the given weights are loaded into it.
    """
    import os

    if net not in ("alex", "vgg"):
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    if not os.path.isfile(backbone_weights):
        raise FileNotFoundError(f"LPIPS backbone weights {backbone_weights!r} do not exist")
    try:
        import lpips
    except ImportError as err:
        raise ValueError(
            "the LPIPS term needs the `lpips` package (pip install lpips) for its linear heads; the backbone is read "
            "from the given file, never downloaded"
        ) from err
    if backbone_weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(backbone_weights)
    else:
        state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    model.net.load_state_dict(_lpips_backbone_state(model.net.state_dict(), state))
    return LPIPSDistance(model.eval().requires_grad_(False))


def _lpips_backbone_state(target: dict, torchvision_state: dict) -> dict:
    """torchvision's `features.<i>.*` keys → the `lpips` slices' `slice<k>.<i>.*` (the layer index is kept)."""
    out = {}
    for key in target:
        _, rest = key.split(".", 1)
        source = f"features.{rest}"
        if source not in torchvision_state:
            raise ValueError(
                f"the LPIPS backbone weights have no {source!r} (a torchvision alexnet/vgg16 state dict?)"
            )
        out[key] = torchvision_state[source]
    return out
