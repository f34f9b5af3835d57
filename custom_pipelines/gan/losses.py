"""GAN objectives as plain functions, plus `gan_losses(name)` bundling one objective with its regularizer.

- "ns_r1": non-saturating logistic loss (Goodfellow et al. 2014, §3) with the R1 penalty on reals
  (Mescheder et al. 2018, eq. 9), StyleGAN's default.
- "wgan": Wasserstein loss with weight clipping (Arjovsky et al. 2017, Algorithm 1).
- "wgan_gp": Wasserstein loss with the gradient penalty on random interpolates (Gulrajani et al. 2017, eq. 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GANLossName = Literal["ns_r1", "wgan", "wgan_gp"]


def ns_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(G(z)) = softplus(−D(G(z))): the non-saturating generator loss."""
    return F.softplus(-fake_logits.float()).mean()


def ns_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x) − log(1 − D(G(z))) with D = sigmoid(logits)."""
    # float32: under bf16 autocast the logits are bf16, too coarse for a mean over the batch
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E‖∇ₓD(x)‖² on real images (Mescheder et al. 2018); `real_images` must require grad. Multiply by γ/2."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1).mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.float().mean()


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] − E[D(x)]: the negated Wasserstein-1 estimate that the critic minimizes."""
    return fake_scores.float().mean() - real_scores.float().mean()


@torch.no_grad()
def clip_weights_(module: nn.Module, clip_value: float = 0.01) -> None:
    """Clamp every parameter of `module` to [−clip_value, clip_value] in place (WGAN's Lipschitz constraint)."""
    if clip_value <= 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")
    for parameter in module.parameters():
        parameter.clamp_(-clip_value, clip_value)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    generator: torch.Generator | None = None,
    gp_lambda: float = 10.0,
) -> torch.Tensor:
    """λ · E[(‖∇x̂ D(x̂)‖₂ − 1)²] with x̂ = ε·x + (1 − ε)·G(z), ε ~ U[0, 1] per sample (WGAN-GP eq. 3)."""
    device = generator.device if generator is not None else real_images.device
    shape = (real_images.shape[0],) + (1,) * (real_images.ndim - 1)
    epsilon = torch.rand(shape, generator=generator, device=device).to(real_images.device, real_images.dtype)
    interpolates = (epsilon * real_images.detach() + (1 - epsilon) * fake_images.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(interpolates).sum(), interpolates, create_graph=True)
    return gp_lambda * (grad.float().flatten(1).norm(2, dim=1) - 1).square().mean()


@dataclass(frozen=True)
class GANLosses:
    """One objective: the generator loss, the full discriminator loss (with its regularizer) and a post-step hook.

    `discriminator_steps` is the number of discriminator updates per generator update the papers use.
    """

    name: str
    r1_gamma: float = 10.0
    gp_lambda: float = 10.0
    clip_value: float = 0.01

    @property
    def discriminator_steps(self) -> int:
        return 1 if self.name == "ns_r1" else 5

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.name == "ns_r1":
            return ns_generator_loss(fake_logits)
        elif self.name in ("wgan", "wgan_gp"):
            return wgan_generator_loss(fake_logits)
        else:
            raise ValueError(f"loss name must be 'ns_r1', 'wgan' or 'wgan_gp', got {self.name!r}")

    def discriminator_loss(
        self,
        discriminator: Callable[[torch.Tensor], torch.Tensor],
        real_images: torch.Tensor,
        fake_images: torch.Tensor,
        generator: torch.Generator | None = None,
        regularize: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one discriminator step and its detached parts for logging; `regularize=False` skips R1 / GP."""
        fake_images = fake_images.detach()
        if self.name == "ns_r1":
            real_images = real_images.detach().requires_grad_(regularize)
            real_logits = discriminator(real_images)
            loss = ns_discriminator_loss(real_logits, discriminator(fake_images))
            logs = {"d_loss": loss.detach()}
            if regularize:
                penalty = r1_penalty(real_logits, real_images)
                loss = loss + 0.5 * self.r1_gamma * penalty
                logs["r1_penalty"] = penalty.detach()
        elif self.name in ("wgan", "wgan_gp"):
            loss = wgan_critic_loss(discriminator(real_images), discriminator(fake_images))
            logs = {"d_loss": loss.detach(), "wasserstein_estimate": -loss.detach()}
            if self.name == "wgan_gp" and regularize:
                penalty = gradient_penalty(discriminator, real_images, fake_images, generator, self.gp_lambda)
                loss = loss + penalty
                logs["gradient_penalty"] = penalty.detach()
        else:
            raise ValueError(f"loss name must be 'ns_r1', 'wgan' or 'wgan_gp', got {self.name!r}")
        return loss, logs

    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        """Call after each optimizer step of the discriminator: WGAN clips its weights, the others do nothing."""
        if self.name == "wgan":
            clip_weights_(discriminator, self.clip_value)


def gan_losses(
    name: GANLossName, r1_gamma: float = 10.0, gp_lambda: float = 10.0, clip_value: float = 0.01
) -> GANLosses:
    """Select an objective: "ns_r1" (non-saturating + R1, γ), "wgan" (weight clipping) or "wgan_gp" (λ)."""
    if name not in ("ns_r1", "wgan", "wgan_gp"):
        raise ValueError(f"name must be 'ns_r1', 'wgan' or 'wgan_gp', got {name!r}")
    if r1_gamma < 0 or gp_lambda < 0:
        raise ValueError(f"r1_gamma and gp_lambda must be >= 0, got {r1_gamma} and {gp_lambda}")
    if clip_value <= 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")
    return GANLosses(name, r1_gamma, gp_lambda, clip_value)
