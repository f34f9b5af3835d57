"""Guidance shared by our pixel pipelines; schedulers know nothing about it.

- Classifier-free guidance (Ho & Salimans 2022) is a thin wrapper around the model (`ClassifierFreeGuidance`):
  the pipeline calls it like a model, `fn(x_t, t) -> output`, and gets the guided prediction.
- Loss guidance (`loss_guided_model_output`): a differentiable `guidance_fn(x̂_0) -> loss` is evaluated on the
  model's estimate of the clean image, and x_t is pushed down the gradient of that loss before the scheduler step,
  x_t ← x_t − s_i ∇_{x_t} L(x̂_0(x_t)), the gradient flowing through the model (as in universal guidance,
  Bansal et al. 2023, and the "guidance functions" of the diffusers course). Two ready loss functions are here:
  a mean colour / brightness target and classifier guidance (−log p(y | x̂_0) under a classifier).
- `drop_class_labels`: the training side of classifier-free guidance (labels replaced by the null class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from custom_pipelines.distill.guidance_embedding import (  # noqa: F401  (check_student_steps: re-exported)
    check_student_steps,
    guided_model_kwargs,
    has_guidance_embedding,
)
from custom_pipelines.schedulers.common import predict_original_sample

from .utils import resize, to_grayscale

GuidanceFn = Callable[[torch.Tensor], torch.Tensor]
GuidanceStrength = float | Callable[[int, int], float]


# ----- classifier-free guidance -----------------------------------------------------------------------------------
def combine_cfg(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float, channels: int) -> torch.Tensor:
    """ε̃ = ε_u + w (ε_c − ε_u) (Ho & Salimans 2022, eq. 6 in diffusers' convention, w = 1 + their w).

    The formula is linear in the output, so it applies to ε, x₀ and v predictions alike. A learned-variance output
    (2·`channels` channels) is guided on its mean part only and keeps the conditional variance (as GLIDE and DiT do).
    """
    if cond.shape[1] == 2 * channels:
        mean_c, variance_c = cond.split(channels, dim=1)
        mean_u, _ = uncond.split(channels, dim=1)
        return torch.cat([mean_u + guidance_scale * (mean_c - mean_u), variance_c], dim=1)
    return uncond + guidance_scale * (cond - uncond)


class ClassifierFreeGuidance:
    r"""A class-conditional UNet seen as an unconditional denoiser `fn(x_t, t) -> guided output`.

    Convention (diffusers'): ε̃ = ε_u + w (ε_c − ε_u). w = 1 is the plain conditional model and w = 0 the
    unconditional one (null class); both run a single forward pass. Any other w runs ONE batched forward pass
    over [x_t; x_t] with labels [y; ∅] and combines the halves. (diffusers' pipelines treat every w ≤ 1 as w = 1;
    here 0 < w < 1 interpolates, as the formula says.)

    Args:
        unet: a class-conditional model with `forward(sample, timestep, class_labels).sample`.
        class_labels (`torch.Tensor`): `[B]` ids in [0, K), one per sample.
        guidance_scale (`float`): w ≥ 0.
        null_class_id (`int`): K, the id of the learned null class.
    """

    def __init__(self, unet, class_labels: torch.Tensor, guidance_scale: float, null_class_id: int):
        self.unet, self.class_labels = unet, class_labels
        self.guidance_scale, self.null_class_id = float(guidance_scale), null_class_id

    @property
    def does_batch_cfg(self) -> bool:
        """Whether a call runs the doubled batch (w ∉ {0, 1}; never for a guidance-embedded student)."""
        return self.guidance_scale not in (0.0, 1.0) and not has_guidance_embedding(self.unet)

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
        if has_guidance_embedding(self.unet):  # a distilled student reads w itself: one pass (distill package)
            batch, device, dtype = sample.shape[0], sample.device, sample.dtype
            w_kwargs = guided_model_kwargs(self.unet, self.guidance_scale, batch, device, dtype)
            return self.unet(sample, timestep, class_labels=self.class_labels, **w_kwargs).sample
        null_labels = torch.full_like(self.class_labels, self.null_class_id)
        if self.guidance_scale == 1.0:
            return self.unet(sample, timestep, class_labels=self.class_labels).sample
        if self.guidance_scale == 0.0:
            return self.unet(sample, timestep, class_labels=null_labels).sample
        if torch.is_tensor(timestep) and timestep.ndim > 0:
            timestep = torch.cat([timestep, timestep])
        output = self.unet(
            torch.cat([sample, sample]), timestep, class_labels=torch.cat([self.class_labels, null_labels])
        ).sample
        cond, uncond = output.chunk(2)
        return combine_cfg(cond, uncond, self.guidance_scale, sample.shape[1])


def drop_class_labels(
    class_labels: torch.Tensor, null_class_id: int, dropout: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null class with probability `dropout` (Ho & Salimans 2022, Algorithm 1, p_uncond),
    so one network learns both the conditional and the unconditional model."""
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"conditioning dropout must be in [0, 1], got {dropout}")
    drop = torch.rand(class_labels.shape, generator=generator, device=class_labels.device) < dropout
    return torch.where(drop, torch.full_like(class_labels, null_class_id), class_labels)


# ----- loss guidance ------------------------------------------------------------------------------------------------
def check_loss_guidance(guidance_fn: GuidanceFn | None, guidance_strength: GuidanceStrength, scheduler) -> None:
    """ValueErrors for a bad `guidance_fn` / `guidance_strength`, or a scheduler loss guidance cannot use."""
    if guidance_fn is None:
        return
    if not callable(guidance_fn):
        raise ValueError(f"guidance_fn must be callable (x0_pred -> loss), got {type(guidance_fn).__name__}")
    if not callable(guidance_strength):
        if isinstance(guidance_strength, bool) or not isinstance(guidance_strength, (int, float)):
            raise ValueError(f"guidance_strength must be a float >= 0 or callable, got {guidance_strength!r}")
        if not guidance_strength >= 0:
            raise ValueError(f"guidance_strength must be >= 0, got {guidance_strength}")
    # x̂_0 is computed from ᾱ_t: that needs a variance-preserving scheduler whose x_t is the model input.
    if getattr(scheduler, "alphas_cumprod", None) is None or getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:
        raise ValueError(
            f"guidance_fn needs a variance-preserving scheduler with alphas_cumprod (DDPM, DDIM, DPM-Solver), "
            f"got {type(scheduler).__name__}"
        )


def strength_at(guidance_strength: GuidanceStrength, step_index: int, timestep) -> float:
    """s_i: the constant strength, or `guidance_strength(step_index, t)`."""
    if callable(guidance_strength):
        return float(guidance_strength(step_index, int(timestep)))
    return float(guidance_strength)


def predict_x0(scheduler, model_output: torch.Tensor, sample: torch.Tensor, timestep) -> torch.Tensor:
    """x̂_0(x_t) from the model output (mean part of a learned-variance output), not clipped."""
    mean_output = model_output[:, : sample.shape[1]]
    alpha_prod_t = scheduler.alphas_cumprod[int(timestep)].to(device=sample.device, dtype=sample.dtype)
    x0, _ = predict_original_sample(mean_output, sample, alpha_prod_t, scheduler.config.prediction_type)
    return x0


def loss_guided_model_output(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    latents: torch.Tensor,
    timestep,
    step_index: int,
    guidance_fn: GuidanceFn | None = None,
    guidance_strength: GuidanceStrength = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output at x_t and the sample to step from: x_t itself, or x_t − s_i ∇_{x_t} L(x̂_0(x_t)).

    Without `guidance_fn` this is one plain `model_fn(scale_model_input(x_t), t)` call. With it, the model runs
    with autograd on, L is summed over the batch (a per-sample loss gives each sample its own gradient, so a batch
    equals its samples made one by one; a batch-mean loss scales each gradient by 1/B), and the returned output is
    the one computed at the un-pushed x_t (one network evaluation per step).
    """
    if guidance_fn is None:
        return model_fn(scheduler.scale_model_input(latents, timestep), timestep), latents
    with torch.enable_grad():
        sample = latents.detach().requires_grad_(True)
        model_output = model_fn(scheduler.scale_model_input(sample, timestep), timestep)
        loss = guidance_fn(predict_x0(scheduler, model_output, sample, timestep))
        if loss.ndim > 1 or (loss.ndim == 1 and loss.shape[0] != sample.shape[0]):
            raise ValueError(f"guidance_fn must return a scalar or one loss per sample, got shape {tuple(loss.shape)}")
        (gradient,) = torch.autograd.grad(loss.sum(), sample)
    strength = strength_at(guidance_strength, step_index, timestep)
    return model_output.detach(), (latents - strength * gradient).detach()


# ----- ready guidance functions -------------------------------------------------------------------------------------
def mean_color_loss(target: float | Sequence[float]) -> GuidanceFn:
    """Guidance toward a mean brightness (one float) or colour (one float per channel), in [0, 1] image units.

    The returned `fn(x0_pred) -> [B]` is H·W · Σ_c (mean_{h,w} img_c − target_c)² with img = (x̂_0 + 1)/2. The H·W
    factor makes the gradient per pixel, (mean_c − target_c) ∂img/∂x̂_0, independent of the image size, so the same
    `guidance_strength` (about 0.5–5) works at every resolution.
    """
    values = [float(target)] if isinstance(target, (int, float)) else [float(v) for v in target]
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"target brightness/colour must be in [0, 1] (one value or one per channel), got {target}")

    def loss(x0_pred: torch.Tensor) -> torch.Tensor:
        if len(values) not in (1, x0_pred.shape[1]):
            raise ValueError(f"target has {len(values)} values for images with {x0_pred.shape[1]} channels")
        goal = torch.tensor(values, device=x0_pred.device, dtype=x0_pred.dtype)
        means = ((x0_pred + 1) / 2).mean(dim=(2, 3))
        return x0_pred.shape[2] * x0_pred.shape[3] * ((means - goal) ** 2).sum(dim=1)

    return loss


def classifier_guidance_loss(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], class_labels: int | Sequence[int] | torch.Tensor
) -> GuidanceFn:
    """Classifier guidance on x̂_0: L = −log p(y | x̂_0) per sample (Dhariwal & Nichol 2021, §4.1, evaluated on the
    denoised estimate so that a classifier trained on clean images can be used).

    Args:
        logits_fn: differentiable `x0_pred [B, C, H, W] in [-1, 1] -> logits [B, num_classes]`.
        class_labels: one class for all samples, or one per sample.
    """
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)

    def loss(x0_pred: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits_fn(x0_pred).float(), dim=-1)
        y = labels.to(log_probs.device).expand(log_probs.shape[0]) if labels.numel() == 1 else labels
        if y.shape[0] != log_probs.shape[0]:
            raise ValueError(f"classifier guidance has {y.shape[0]} class_labels for a batch of {log_probs.shape[0]}")
        return -log_probs.gather(1, y.to(log_probs.device)[:, None]).squeeze(1)

    return loss


def digits_classifier_guidance(classifier, class_labels: int | Sequence[int] | torch.Tensor) -> GuidanceFn:
    """Classifier guidance with our `DigitsClassifier` (`custom_pipelines.evaluation.load_digits_classifier`).

    The classifier's preprocessing, made differentiable: gray, resized to its resolution, no 8-bit rounding.
    """

    def logits(x0_pred: torch.Tensor) -> torch.Tensor:
        images = to_grayscale((x0_pred + 1) / 2)
        return classifier(resize(images, classifier.config.resolution).to(classifier.dtype))

    return classifier_guidance_loss(logits, class_labels)
