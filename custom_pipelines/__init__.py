"""Diffusion and GAN pipelines, schedulers and models that plug into Hugging Face diffusers."""

from .evaluation import DigitsClassifier, InceptionV3FID, evaluate_pipeline
from .gan import (
    DCGANCritic,
    DCGANGenerator,
    ProGANDiscriminator,
    ProGANGenerator,
    StyleGANDiscriminator,
    StyleGANGenerator,
)
from .hub.loader import load_pipeline
from .models import ClassConcatUNet2DModel
from .pipelines.fast_sampling import enable_fast_sampling
from .pipelines.guidance import classifier_guidance_loss, digits_classifier_guidance, mean_color_loss
from .pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from .pipelines.pipeline_gan import GANPipeline
from .pipelines.pipeline_stylegan import StyleGANPipeline
from .pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from .pipelines.timestep_search import optimize_timesteps
from .schedulers import DDIMEtaScheduler, DDPMAncestralScheduler, DPMSolver2MScheduler, make_beta_schedule

__version__ = "0.1.0"

__all__ = [
    "ClassConcatUNet2DModel",
    "ClassConditionalDiffusionPipeline",
    "classifier_guidance_loss",
    "digits_classifier_guidance",
    "mean_color_loss",
    "DCGANCritic",
    "DCGANGenerator",
    "DDIMEtaScheduler",
    "DDPMAncestralScheduler",
    "DPMSolver2MScheduler",
    "DigitsClassifier",
    "GANPipeline",
    "InceptionV3FID",
    "ProGANDiscriminator",
    "ProGANGenerator",
    "StyleGANDiscriminator",
    "StyleGANGenerator",
    "StyleGANPipeline",
    "UnconditionalDiffusionPipeline",
    "enable_fast_sampling",
    "evaluate_pipeline",
    "load_pipeline",
    "make_beta_schedule",
    "optimize_timesteps",
]
