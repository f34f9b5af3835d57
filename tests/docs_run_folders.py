"""Tiny stand-ins for the run folders the docs' Python blocks load (`runs/ddpm-digits`, `runs/cfg-digits`, ...):
each is a saved pipeline (or model) of the type the real run writes, with the variant's architecture narrowed to
test size (hub_configs/ stays the source of every other key) and the real run's input/output shapes (16×16 digits,
32×32 latent digits, RGB photos), so the snippets run as written, in seconds, on untrained weights."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from custom_pipelines.data import DIGIT_NAMES
from custom_pipelines.hub.configs import load_component_config


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)  # the weights of the component built next


def ddpm_digits(folder: Path) -> None:
    """`make demo`: UnconditionalDiffusionPipeline, 1×16×16, the digits variant's T = 1000 scheduler."""
    from diffusers import UNet2DModel

    from custom_pipelines import DDPMAncestralScheduler, UnconditionalDiffusionPipeline

    _seeded(0)
    unet = UNet2DModel.from_config({**load_component_config("ddpm-tiny-8", "unet"), "sample_size": 16})
    scheduler = DDPMAncestralScheduler.from_config(
        load_component_config("ddpm-digits-16", "scheduler", "scheduler_config.json")
    )
    UnconditionalDiffusionPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(folder)


def cfg_digits(folder: Path) -> None:
    """`make demo-cfg`: ClassConditionalDiffusionPipeline, 10 classes named as the built-in digits name them."""
    from diffusers import UNet2DModel

    from custom_pipelines import ClassConditionalDiffusionPipeline, DDPMAncestralScheduler

    _seeded(0)
    unet = UNet2DModel.from_config({**load_component_config("cfg-tiny-8", "unet"), "sample_size": 16})
    scheduler = DDPMAncestralScheduler.from_config(
        load_component_config("cfg-digits-16", "scheduler", "scheduler_config.json")
    )
    id2label = dict(enumerate(DIGIT_NAMES))
    ClassConditionalDiffusionPipeline(unet=unet.eval(), scheduler=scheduler, id2label=id2label).save_pretrained(folder)


def stylegan_digits(folder: Path) -> None:
    """The README's StyleGAN run: StyleGANPipeline at 16×16 (the smallest size with a "coarse" 4²–8² band to mix)."""
    from custom_pipelines import StyleGANGenerator, StyleGANPipeline

    _seeded(0)
    tiny = {"resolution": 16, "z_dim": 16, "w_dim": 16, "n_mapping_layers": 2, "channel_base": 128, "channel_max": 16}
    stylegan = StyleGANGenerator.from_config({**load_component_config("stylegan-digits-32", "stylegan"), **tiny})
    StyleGANPipeline(stylegan=stylegan.eval()).save_pretrained(folder)


def super_resolution(folder: Path) -> None:
    """`make demo-sr`'s srresnet/ and srgan/: SuperResolutionPipeline ×4 on RGB."""
    from custom_pipelines import SuperResolutionPipeline
    from custom_pipelines.gan.srgan import SRResNetGenerator

    _seeded(0)
    config = {**load_component_config("srresnet-photos-x4", "upscaler"), "num_features": 8, "num_blocks": 1}
    SuperResolutionPipeline(upscaler=SRResNetGenerator.from_config(config).eval()).save_pretrained(folder)


def cyclegan_digits(folder: Path) -> None:
    """`make demo-cyclegan`: CycleGANPipeline, thin ↔ thick digits, 1 channel."""
    from custom_pipelines import CycleGANPipeline
    from custom_pipelines.gan.cyclegan import CycleGANGenerator

    generators = []
    for seed, name in enumerate(("generator_a_to_b", "generator_b_to_a")):
        _seeded(seed)
        config = {**load_component_config("cyclegan-digits-thick-16", name), "base_channels": 4}
        generators.append(CycleGANGenerator.from_config({**config, "num_residual_blocks": 1}).eval())
    CycleGANPipeline(*generators).save_pretrained(folder)


def _tiny_vae():
    """The f = 4 digits VAE (1×32×32 → 4×8×8), narrowed."""
    from diffusers import AutoencoderKL

    _seeded(0)
    narrow = {"block_out_channels": [8, 16, 16], "norm_num_groups": 4}
    return AutoencoderKL.from_config({**load_component_config("vae-digits-32-f4", "vae"), **narrow}).eval()


def vae_digits(folder: Path) -> None:
    """`make demo-vae`: the AutoencoderKL folder itself (no pipeline around it)."""
    _tiny_vae().save_pretrained(folder)


def ldm_text_digits(folder: Path) -> None:
    """`make demo-ldm`: text-conditional LatentDiffusionPipeline (VAE f = 4, cross-attention UNet on 4×8×8 latents,
    a 2-layer BERT with all-MiniLM-L6-v2's real tokenizer, as the trained one saves them)."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from custom_pipelines import DDPMAncestralScheduler, LatentDiffusionPipeline
    from custom_pipelines.models.text_encoder import default_text_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(default_text_encoder_path(), local_files_only=True)
    tokenizer.model_max_length = 16
    _seeded(0)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    narrow = {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4, "cross_attention_dim": 32}
    unet = UNet2DConditionModel.from_config({**load_component_config("ldm-text-digits-32", "unet"), **narrow})
    scheduler = DDPMAncestralScheduler.from_config(
        load_component_config("ldm-text-digits-32", "scheduler", "scheduler_config.json")
    )
    text_encoder = BertModel(bert).eval()
    pipe = LatentDiffusionPipeline(
        vae=_tiny_vae(), unet=unet.eval(), scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
    )
    pipe.save_pretrained(folder)


def ddpm_digits_distilled(folder: Path) -> None:
    """`make demo-distill`: the tiny `make demo` teacher's student (its UNet, LCMScheduler on a 20-step grid)."""
    import tempfile

    from custom_pipelines.distill.teacher import (
        build_student_pipeline,
        build_student_scheduler,
        build_student_unet,
        load_teacher,
    )

    with tempfile.TemporaryDirectory() as tmp:
        ddpm_digits(Path(tmp) / "teacher")
        teacher = load_teacher(str(Path(tmp) / "teacher"))
        unet, scheduler = build_student_unet(teacher), build_student_scheduler(teacher, 20)
        build_student_pipeline(teacher, unet, scheduler).save_pretrained(folder)


# The folders the docs load, by the path they name; the real ones are what the `make demo*` targets write.
RUN_FOLDERS: dict[str, Callable[[Path], None]] = {
    "runs/ddpm-digits": ddpm_digits,
    "runs/ddpm-digits-distilled": ddpm_digits_distilled,
    "runs/cfg-digits": cfg_digits,
    "runs/stylegan-digits": stylegan_digits,
    "runs/demo-sr/srresnet": super_resolution,
    "runs/demo-sr/srgan": super_resolution,
    "runs/demo-cyclegan": cyclegan_digits,
    "runs/vae-digits-32": vae_digits,
    "runs/ldm-text-digits": ldm_text_digits,
}


class RunFolders:
    """Builds each tiny run folder once (under `cache`) and copies the ones a doc names into a working directory."""

    def __init__(self, cache: Path):
        self.cache = cache

    def built(self, name: str) -> Path:
        folder = self.cache / name
        if not (folder / "config.json").exists() and not (folder / "model_index.json").exists():
            RUN_FOLDERS[name](folder)
        return folder

    def copy_into(self, workdir: Path, names: list[str]) -> None:
        for name in names:
            shutil.copytree(self.built(name), workdir / name)
