"""GAN objectives: the loss terms as plain functions, and one small class per objective that combines them.

- "ns_r1" `NonSaturatingR1`: non-saturating logistic loss (Goodfellow et al. 2014, §3) with the R1 penalty on reals
  (Mescheder et al. 2018, eq. 9), StyleGAN's default.
- "wgan" `WGANClipping`: Wasserstein loss with weight clipping (Arjovsky et al. 2017, Algorithm 1).
- "wgan_gp" `WGANGP`: Wasserstein loss with the gradient penalty on random interpolates (Gulrajani et al. 2017, eq. 3).

`GAN_OBJECTIVES` maps these names to the classes; `gan_objective(name, ...)` builds one and raises on any other name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

GANObjectiveName = Literal["ns_r1", "wgan", "wgan_gp"]
Discriminator = Callable[[torch.Tensor], torch.Tensor]


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
    critic: Discriminator,
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


class GANObjective(abc.ABC):
    """One GAN objective: the discriminator's loss (with its regularizer), the generator's, and a post-step hook.

    Each objective is a frozen dataclass whose fields are its weights (`r1_gamma`, `clip_value`, `gp_lambda`).

    Class attributes:
        n_critic: discriminator updates per generator update in the objective's paper; the training script's
            default for `--n_critic`.
        optimizer: `"adam"` or `"rmsprop"`, the optimizer family the objective is trained with.
        default_learning_rate: the step size the objective's paper prescribes with it, or None (WGAN: 5e-5).
        penalty_field: the name of the field that weights the gradient penalty, or None for an objective without.
    """

    n_critic: ClassVar[int]
    optimizer: ClassVar[Literal["adam", "rmsprop"]] = "adam"
    default_learning_rate: ClassVar[float | None] = None
    penalty_field: ClassVar[str | None] = None

    @abc.abstractmethod
    def discriminator_loss(
        self,
        discriminator: Discriminator,
        real_images: torch.Tensor,
        fake_images: torch.Tensor,
        generator: torch.Generator | None = None,
        regularize: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one discriminator step and its detached parts for logging; `regularize=False` skips R1 / GP
        (lazy regularization). `fake_images` are detached: the step does not reach the generator."""

    @abc.abstractmethod
    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """The generator's loss from the discriminator's outputs on fakes."""

    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        """Call after each optimizer step of the discriminator; only weight-clipped WGAN does something here."""
        return None

    def __post_init__(self):
        for field in fields(self):  # the weights; 0 turns a penalty off
            if not getattr(self, field.name) >= 0:
                raise ValueError(f"{field.name} must be >= 0, got {getattr(self, field.name)}")

    @property
    def penalty_weight(self) -> float:
        """The weight of the discriminator's gradient penalty (R1's γ, WGAN-GP's λ); 0 for an objective without."""
        return 0.0 if self.penalty_field is None else getattr(self, self.penalty_field)

    @property
    def needs_double_backward(self) -> bool:
        """Whether the discriminator loss holds a gradient of a gradient (a penalty of weight > 0)."""
        return self.penalty_weight > 0


@dataclass(frozen=True)
class NonSaturatingR1(GANObjective):
    """Non-saturating logistic loss + γ/2 · R1 on reals; one discriminator step per generator step (StyleGAN).

    Args:
        r1_gamma: γ ≥ 0, the weight of the R1 penalty (default 10, Mescheder et al. 2018; 0 turns it off).
    """

    r1_gamma: float = 10.0
    n_critic = 1
    penalty_field = "r1_gamma"

    def discriminator_loss(self, discriminator, real_images, fake_images, generator=None, regularize=True):
        regularize = regularize and self.r1_gamma > 0
        real_images = real_images.detach().requires_grad_(regularize)
        real_logits = discriminator(real_images)
        loss = ns_discriminator_loss(real_logits, discriminator(fake_images.detach()))
        logs = {"d_loss": loss.detach()}
        if regularize:
            penalty = r1_penalty(real_logits, real_images)
            loss = loss + 0.5 * self.r1_gamma * penalty
            logs["r1_penalty"] = penalty.detach()
        return loss, logs

    def generator_loss(self, fake_logits):
        return ns_generator_loss(fake_logits)


def _wasserstein_critic_loss(discriminator, real_images, fake_images) -> tuple[torch.Tensor, dict]:
    loss = wgan_critic_loss(discriminator(real_images), discriminator(fake_images.detach()))
    return loss, {"d_loss": loss.detach(), "wasserstein_estimate": -loss.detach()}


@dataclass(frozen=True)
class WGANClipping(GANObjective):
    """Wasserstein loss with D's weights clipped to [−c, c] after every step; five critic steps per generator step
    and RMSProp at 5e-5, since momentum destabilizes it (Arjovsky et al. 2017, Algorithm 1 and §4.3).

    Args:
        clip_value: c > 0 (default 0.01).
    """

    clip_value: float = 0.01
    n_critic = 5
    optimizer = "rmsprop"
    default_learning_rate = 5e-5

    def __post_init__(self):  # a bound of 0 would zero every weight
        if not self.clip_value > 0:
            raise ValueError(f"clip_value must be > 0, got {self.clip_value}")

    def discriminator_loss(self, discriminator, real_images, fake_images, generator=None, regularize=True):
        return _wasserstein_critic_loss(discriminator, real_images, fake_images)

    def generator_loss(self, fake_logits):
        return wgan_generator_loss(fake_logits)

    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        clip_weights_(discriminator, self.clip_value)


@dataclass(frozen=True)
class WGANGP(GANObjective):
    """Wasserstein loss + λ · gradient penalty on random interpolates; five critic steps per generator step
    (Gulrajani et al. 2017, Algorithm 1). The interpolation weights come from the `generator` passed to the loss.

    Args:
        gp_lambda: λ ≥ 0 (default 10, the paper's).
    """

    gp_lambda: float = 10.0
    n_critic = 5
    penalty_field = "gp_lambda"

    def discriminator_loss(self, discriminator, real_images, fake_images, generator=None, regularize=True):
        loss, logs = _wasserstein_critic_loss(discriminator, real_images, fake_images)
        if regularize and self.gp_lambda > 0:
            penalty = gradient_penalty(discriminator, real_images, fake_images, generator, self.gp_lambda)
            loss = loss + penalty
            logs["gradient_penalty"] = penalty.detach()
        return loss, logs

    def generator_loss(self, fake_logits):
        return wgan_generator_loss(fake_logits)


GAN_OBJECTIVES: dict[str, type[GANObjective]] = {
    "ns_r1": NonSaturatingR1,
    "wgan": WGANClipping,
    "wgan_gp": WGANGP,
}


def objective_class(name: str) -> type[GANObjective]:
    """The class registered under `name` in `GAN_OBJECTIVES`; any other name raises ValueError listing them."""
    if name not in GAN_OBJECTIVES:
        raise ValueError(f"GAN objective must be one of {sorted(GAN_OBJECTIVES)}, got {name!r}")
    return GAN_OBJECTIVES[name]


def gan_objective(
    name: GANObjectiveName, r1_gamma: float = 10.0, gp_lambda: float = 10.0, clip_value: float = 0.01
) -> GANObjective:
    """Build the objective `name` with its own weight: `r1_gamma` for "ns_r1", `clip_value` for "wgan",
    `gp_lambda` for "wgan_gp" (the other two are not used)."""
    cls = objective_class(name)
    weights = {"r1_gamma": r1_gamma, "gp_lambda": gp_lambda, "clip_value": clip_value}
    return cls(**{field.name: weights[field.name] for field in fields(cls)})


# the names `custom_pipelines.gan` has exported since the first release
GANLosses = GANObjective
gan_losses = gan_objective
