"""Train a class-conditional pixel-space DDPM for classifier-free guidance (Ho & Salimans 2022).

    accelerate launch training/train_cfg.py --dataset_name digits --conditioning_dropout 0.1 \\
        --output_dir runs/cfg-digits --max_train_steps 3000

One network learns p(x | y) and p(x): each label is replaced by the null class (id K) with probability
`--conditioning_dropout`. The model size comes from a `hub_configs/` variant (`--model_config`, default
cfg-digits-16); `--conditioning` picks how the class enters the UNet (`embedding`: added to the timestep embedding,
diffusers' `num_class_embeds`; `concat`: a class map as extra input channels, `ClassConcatUNet2DModel`). Class names
come from the dataset's `ClassLabel` feature and are saved in the pipeline config.

`--pretrained_model_name_or_path` fine-tunes a saved pipeline (class-conditional, or an unconditional DDPM whose
UNet gets a zero-initialised class embedding, so training starts exactly from the given model). Without an explicit
`--learning_rate`, fine-tuning uses a 10× lower default (2e-5 instead of 2e-4).
"""

from __future__ import annotations

import argparse

from custom_pipelines.cli import console_entry
from custom_pipelines.lora.training import add_lora_args, apply_lora, validate_lora_args
from custom_pipelines.options import CONDITIONING_METHODS
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.diffusion import add_diffusion_args, validate_diffusion_args

# Heavy modules (torch, diffusers, datasets, accelerate) are imported inside the functions that use them, so
# `--help` and flag errors answer at once.
DEFAULT_LEARNING_RATE = 2e-4
UNET_CLASS_NAMES = ("UNet2DModel", "ClassConcatUNet2DModel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=DEFAULT_LEARNING_RATE)
    cfg = parser.add_argument_group("classifier-free guidance")
    cfg.add_argument("--model_config", default="cfg-digits-16", help="hub_configs variant, folder or Hub repo id")
    cfg.add_argument("--conditioning", default=None, help=f"one of {CONDITIONING_METHODS} (default: the config's)")
    cfg.add_argument("--class_embed_dim", type=int, default=None, help="channels of the class map (concat only)")
    cfg.add_argument("--conditioning_dropout", type=float, default=0.1, help="p_uncond: P(label → null class)")
    cfg.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="K; needed for a stream whose labels are plain ints (read from the data otherwise)",
    )
    add_diffusion_args(cfg)
    add_lora_args(parser)
    cfg.add_argument("--validation_guidance_scale", type=float, default=2.0, help="w for validation grids")
    args = parser.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    validate_diffusion_args(args)
    validate_lora_args(args)
    if args.conditioning is not None and args.conditioning not in CONDITIONING_METHODS:
        raise ValueError(f"--conditioning must be one of {CONDITIONING_METHODS}, got {args.conditioning!r}")
    if args.class_embed_dim is not None and args.class_embed_dim < 1:
        raise ValueError(f"--class_embed_dim must be a positive integer, got {args.class_embed_dim}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num_classes must be a positive integer, got {args.num_classes}")
    if not 0.0 <= args.conditioning_dropout < 1.0:
        raise ValueError(f"--conditioning_dropout must be in [0, 1), got {args.conditioning_dropout}")
    if not 0 <= args.validation_guidance_scale < float("inf"):  # NaN fails too
        raise ValueError(f"--validation_guidance_scale must be >= 0 and finite, got {args.validation_guidance_scale}")


def dataset_classes(dataset, label_column: str) -> tuple[int, dict[int, str] | None]:
    """K and the class names of the label column (a `ClassLabel` feature names them; plain ints give K only)."""
    import datasets

    if label_column not in dataset.column_names:
        raise ValueError(f"--label_column={label_column!r} is not a column of the dataset {dataset.column_names}")
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes, dict(enumerate(feature.names))
    labels = dataset.unique(label_column)
    if not all(isinstance(v, int) and v >= 0 for v in labels):
        raise ValueError(f"--label_column={label_column!r} must hold integer class ids >= 0, got {labels[:10]}")
    return max(labels) + 1, None


def stream_classes(args) -> tuple[int, dict[int, str] | None]:
    """K and the class names of a streamed dataset, from its features (a `ClassLabel`) or `--num_classes`: a
    stream's labels cannot be counted without reading it all."""
    import datasets

    from custom_pipelines.training.streaming import load_stream

    feature = (load_stream(args).features or {}).get(args.label_column)
    if feature is None:
        raise ValueError(f"--label_column={args.label_column!r} is not a column of the stream (webdataset: KEY.cls)")
    if isinstance(feature, datasets.ClassLabel):
        if args.num_classes not in (None, feature.num_classes):
            raise ValueError(f"--num_classes {args.num_classes}: the stream names {feature.num_classes} classes")
        return feature.num_classes, dict(enumerate(feature.names))
    if args.num_classes is None:
        raise ValueError("--streaming with plain integer labels needs --num_classes (K: ids 0 … K-1)")
    return args.num_classes, None


def source_unet_config(args) -> dict:
    """The UNet config to start from: the pretrained pipeline's or the model config variant's."""
    from custom_pipelines.hub.configs import load_component_config

    return load_component_config(args.pretrained_model_name_or_path or args.model_config, "unet")


def load_pretrained_unet(args, config: dict, num_classes: int):
    """A saved pipeline's UNet; an unconditional one gets a zero class embedding (it starts as the given model)."""
    import torch
    from diffusers import UNet2DModel

    from custom_pipelines.models.class_conditioning import conditioning_method, num_classes_of
    from custom_pipelines.models.unet_class_concat import ClassConcatUNet2DModel

    path = args.pretrained_model_name_or_path
    if config["_class_name"] not in UNET_CLASS_NAMES:
        raise ValueError(f"{path} has a {config['_class_name']} UNet; expected one of {sorted(UNET_CLASS_NAMES)}")
    cls = UNet2DModel if config["_class_name"] == "UNet2DModel" else ClassConcatUNet2DModel
    if cls is UNet2DModel and not config.get("num_class_embeds"):
        if args.conditioning == "concat":
            raise ValueError("--conditioning concat cannot start from an unconditional UNet; use embedding")
        unet = UNet2DModel.from_pretrained(
            path, subfolder="unet", num_class_embeds=num_classes + 1, low_cpu_mem_usage=False
        )
        torch.nn.init.zeros_(unet.class_embedding.weight)
        return unet
    unet = cls.from_pretrained(path, subfolder="unet")
    if args.conditioning is not None and args.conditioning != conditioning_method(unet):
        raise ValueError(f"--conditioning {args.conditioning} differs from {path}'s {conditioning_method(unet)}")
    if num_classes_of(unet) != num_classes:
        raise ValueError(f"{path} has {num_classes_of(unet)} classes but the dataset has {num_classes}")
    return unet


def build_models(args, num_classes: int):
    """Class-conditional UNet + scheduler: fine-tuned from a saved pipeline, or fresh from a config variant."""
    from custom_pipelines.models.class_conditioning import class_conditional_unet_config
    from custom_pipelines.training.diffusion import load_training_scheduler

    config = source_unet_config(args)
    if args.pretrained_model_name_or_path:
        unet = load_pretrained_unet(args, config, num_classes)
    else:
        method = args.conditioning or ("concat" if config["_class_name"] == "ClassConcatUNet2DModel" else "embedding")
        cls, unet_config = class_conditional_unet_config(config, method, num_classes, args.class_embed_dim)
        unet = cls.from_config(unet_config)
    return unet, load_training_scheduler(args, prediction_type=args.prediction_type)


def main(args: argparse.Namespace) -> str:
    import torch

    from custom_pipelines.models.class_conditioning import conditioning_method, null_class_id
    from custom_pipelines.pipelines.guidance import drop_class_labels
    from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
    from custom_pipelines.training import create_accelerator
    from custom_pipelines.training.data import load_train_dataset
    from custom_pipelines.training.diffusion import (
        diffusion_loss,
        sample_validation_images,
        set_training_resolution,
        unet_trainer,
    )

    accelerator = create_accelerator(args)
    if args.streaming:  # the trainer core streams; the classes come from the stream's features or --num_classes
        dataset, (num_classes, id2label) = None, stream_classes(args)
    else:
        dataset = load_train_dataset(args, args.resolution or source_unet_config(args)["sample_size"])
        num_classes, id2label = dataset_classes(dataset, args.label_column)
        if args.num_classes not in (None, num_classes):
            raise ValueError(f"--num_classes {args.num_classes}: the dataset has {num_classes} classes")
    unet, scheduler = build_models(args, num_classes)
    unet = apply_lora(unet, args)  # --lora_rank: the base frozen, an adapter to train
    resolution = set_training_resolution(unet, args.resolution)
    null_id = null_class_id(unet)
    validation_classes = args.class_filter or list(range(num_classes))

    def training_step(trainer, batch: dict) -> dict:
        # Global torch RNG: seeded by accelerate's set_seed and saved/restored with every checkpoint.
        labels = drop_class_labels(batch["labels"], null_id, args.conditioning_dropout)
        losses = diffusion_loss(
            trainer.models["unet"], scheduler, batch["pixel_values"], snr_gamma=args.snr_gamma, class_labels=labels
        )
        trainer.backward_and_step("unet", losses["loss"])
        return {"loss": losses["loss"], "null_label_fraction": (labels == null_id).float().mean()}

    def pipeline(trainer) -> ClassConditionalDiffusionPipeline:
        return ClassConditionalDiffusionPipeline(unet=trainer.unwrap("unet"), scheduler=scheduler, id2label=id2label)

    def sample_images(trainer) -> torch.Tensor:
        labels = [validation_classes[i % len(validation_classes)] for i in range(args.num_validation_images)]
        return sample_validation_images(
            pipeline(trainer), trainer, class_labels=labels, guidance_scale=args.validation_guidance_scale
        )

    method = conditioning_method(unet)
    trainer = unet_trainer(
        args,
        accelerator,
        unet,
        pipeline=pipeline,
        eval_pipeline_kwargs={"guidance_scale": args.validation_guidance_scale, "class_labels": validation_classes},
        training_step=training_step,
        sample_images=sample_images,
        resolution=resolution,
        family="cfg",
        pipeline_class="ClassConditionalDiffusionPipeline",
        script=__file__,
        example_call_kwargs={
            "class_labels": list(range(num_classes)),
            "guidance_scale": 2.0,
            "num_inference_steps": 50,
        },  # fmt: skip
        description=f"Class-conditional DDPM for classifier-free guidance ({num_classes} classes, class {method}, "
        f"p_uncond {args.conditioning_dropout}) trained on {args.dataset_name or args.train_data_dir}.",
        dataset=dataset,
    )
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
