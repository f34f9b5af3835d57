"""Diffusion and GAN pipelines, schedulers and models that plug into Hugging Face diffusers.

Public names are imported on first use (as diffusers does), so `import custom_pipelines` and the command lines'
`--help` do not pay for torch and diffusers until something needs them.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_PUBLIC = {  # name → the module that defines it
    "ClassConcatUNet2DModel": ".models",
    "ClassConditionalDiffusionPipeline": ".pipelines.pipeline_class_conditional",
    "CycleGANGenerator": ".gan.cyclegan",
    "CycleGANPipeline": ".pipelines.pipeline_cyclegan",
    "DCGANCritic": ".gan",
    "DCGANGenerator": ".gan",
    "LoraMixin": ".lora",
    "DDIMEtaScheduler": ".schedulers",
    "DDPMAncestralScheduler": ".schedulers",
    "DPMSolver2MScheduler": ".schedulers",
    "DiffusionImg2ImgPipeline": ".pipelines.pipeline_img2img",
    "DigitsClassifier": ".evaluation",
    "GuidanceEmbeddedUNet2DModel": ".distill",
    "GANPipeline": ".pipelines.pipeline_gan",
    "InceptionV3FID": ".evaluation",
    "LatentDiffusionPipeline": ".pipelines.pipeline_latent_diffusion",
    "LatentImg2ImgPipeline": ".pipelines.pipeline_img2img",
    "PatchGANDiscriminator": ".gan.patchgan",
    "ProGANDiscriminator": ".gan",
    "ProGANGenerator": ".gan",
    "SRGANDiscriminator": ".gan.srgan",
    "SRGANGenerator": ".gan.srgan",
    "SRResNetGenerator": ".gan.srgan",
    "StyleGANDiscriminator": ".gan",
    "StyleGANGenerator": ".gan",
    "StyleGANPipeline": ".pipelines.pipeline_stylegan",
    "SuperResolutionPipeline": ".pipelines.pipeline_super_resolution",
    "UnconditionalDiffusionPipeline": ".pipelines.pipeline_unconditional_diffusion",
    "classifier_guidance_loss": ".pipelines.guidance",
    "digits_classifier_guidance": ".pipelines.guidance",
    "enable_fast_sampling": ".pipelines.fast_sampling",
    "evaluate_pipeline": ".evaluation",
    "load_pipeline": ".hub.loader",
    "make_beta_schedule": ".schedulers",
    "mean_color_loss": ".pipelines.guidance",
    "optimize_timesteps": ".pipelines.timestep_search",
    "resolve_mixed_precision": ".precision",
    "resolve_torch_dtype": ".precision",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
