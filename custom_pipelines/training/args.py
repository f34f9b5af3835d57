"""The command-line flags every training script shares, and their validation."""

from __future__ import annotations

import argparse
import math

from custom_pipelines.options import ATTENTION_BACKENDS, MIXED_PRECISION_CHOICES

FINETUNE_LR_FACTOR = 0.1  # fine-tuning starts from good weights: a 10× smaller default step keeps them
# diffusers' schedules + constant_then_linear: constant for the first half of the steps (after warmup), then linear
# decay to 0 over the second half (CycleGAN's schedule, Zhu et al. 2017 §7)
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant_then_linear",
)


def add_common_args(
    parser: argparse.ArgumentParser, *, default_learning_rate: float = 1e-4
) -> argparse.ArgumentParser:
    """Add data, optimisation, accelerate, EMA, checkpoint, logging and hub flags (diffusers' example names)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name", default=None, help="built-in name (digits, faces, photos), saved dataset dir or Hub id"
    )
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_data_dir", default=None, help="a folder of images (imagefolder layout)")
    data.add_argument(
        "--train_shards",
        default=None,
        help="webdataset .tar (or .parquet) shards, streamed: a brace range 'dir/train-{00000..00099}.tar' or a glob",
    )
    data.add_argument(
        "--streaming",
        action="store_true",
        help="read --dataset_name / --train_data_dir as a stream (never whole in memory, no Arrow copy on disk); "
        "needs --max_train_steps",
    )
    data.add_argument(
        "--shuffle_buffer_size", type=int, default=1000, help="streaming: examples in the seeded shuffle buffer"
    )
    data.add_argument(
        "--max_bad_samples",
        type=int,
        default=100,
        help="streaming: examples whose image cannot be decoded (a corrupt tar member, a broken file) are skipped "
        "with a warning and counted over all processes; the run stops when the count exceeds this (0: at the first)",
    )
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--resolution", type=int, default=None, help="training side in pixels (default: the model's)")
    data.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True)
    data.add_argument("--random_flip", action="store_true", help="random horizontal flips (not for digits)")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--class_filter", type=int, nargs="+", default=None, help="keep only these label ids")
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=None,
        help="worker processes per training process (batches are the same for any N); default: 0 on CPU (the "
        "workers share the cores the model trains on: no gain measured), min(4, CPU cores per process - 1) on CUDA",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--output_dir", required=True)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--train_batch_size", type=int, default=64, help="per process")
    opt.add_argument("--num_epochs", type=int, default=None)
    opt.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_epochs")
    opt.add_argument("--gradient_accumulation_steps", type=int, default=1)
    opt.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help=f"default {default_learning_rate:g}; {FINETUNE_LR_FACTOR:g}× that with --pretrained_model_name_or_path",
    )
    parser.set_defaults(default_learning_rate=default_learning_rate)
    opt.add_argument("--lr_scheduler", default="constant_with_warmup", choices=LR_SCHEDULERS)
    opt.add_argument("--lr_warmup_steps", type=int, default=100)
    opt.add_argument("--adam_beta1", type=float, default=0.9)
    opt.add_argument("--adam_beta2", type=float, default=0.999)
    opt.add_argument("--adam_weight_decay", type=float, default=0.0)
    opt.add_argument("--adam_epsilon", type=float, default=1e-8)
    opt.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    opt.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="an update whose gradients hold NaN/inf is skipped with a warning; this many in a row stop the run",
    )
    opt.add_argument(
        "--mixed_precision",
        default="auto",
        choices=MIXED_PRECISION_CHOICES,
        help="auto: bf16 where the device runs it natively (CUDA ≥ sm80, CPUs with AVX-512-BF16/AMX), else fp32 (no)",
    )
    opt.add_argument(
        "--ddp_timeout", type=int, default=1800, help="seconds a multi-process collective may wait before failing"
    )
    opt.add_argument(
        "--attention_backend",
        default="auto",
        choices=ATTENTION_BACKENDS,
        help="attention layers: 'auto' = plain matmuls for bf16 on CPU (faster backward at small sizes), else SDPA",
    )
    opt.add_argument(
        "--compile_check",
        default="on",
        choices=["on", "off"],
        help="with accelerate's --dynamo_backend: compare the compiled model's first gradients with eager mode and "
        "stop on a mismatch (single process)",
    )
    opt.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute activations in the backward pass instead of keeping them (less memory, more compute): "
        "diffusers' UNet2DModel / UNet2DConditionModel / AutoencoderKL and our class-concat UNet",
    )
    opt.add_argument("--pretrained_model_name_or_path", default=None, help="fine-tune from a pipeline dir or Hub id")

    ema = parser.add_argument_group("EMA (diffusers' EMAModel with warm-up)")
    ema.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    ema.add_argument("--ema_max_decay", type=float, default=0.9999)
    ema.add_argument("--ema_inv_gamma", type=float, default=1.0)
    ema.add_argument("--ema_power", type=float, default=3 / 4)

    run = parser.add_argument_group("checkpoints, logging, hub")
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=None)
    run.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint dir, or 'latest' (the newest in --output_dir; none yet: start the run afresh)",
    )
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="a non-empty --output_dir is refused unless the run resumes there; this replaces what an earlier run "
        "wrote in it (checkpoints, samples, logs, metrics, the saved pipeline) instead",
    )
    run.add_argument("--validation_steps", type=int, default=500)
    run.add_argument("--num_validation_images", type=int, default=16)
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--report_to", default="tensorboard", choices=("tensorboard", "none"))
    run.add_argument("--eval_fid_every", type=int, default=0, help="every N steps: FID/KID/precision/recall (0: off)")
    run.add_argument("--eval_num_samples", type=int, default=256, help="generated images per evaluation")
    run.add_argument(
        "--eval_reference", default=None, help="'digits' or an image folder (default: digits / --train_data_dir)"
    )
    run.add_argument("--eval_feature_extractor", default="digits", choices=("digits", "inception"))
    run.add_argument("--eval_inception_weights", default=None, help="safetensors file / repo of the FID Inception-v3")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_token", default=None)
    run.add_argument("--hub_private", action="store_true")
    return parser


def _positive(args, *names: str, allow_none: bool = False) -> None:
    for name in names:
        value = getattr(args, name)
        if value is None and allow_none:
            continue
        if value is None or value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")


def validate_common_args(args: argparse.Namespace) -> None:
    """Raise a ValueError naming the flag for every bad value, before any model or process is set up."""
    sources = [args.dataset_name, args.train_data_dir, getattr(args, "train_shards", None)]
    if sum(source is not None for source in sources) != 1:
        raise ValueError("give exactly one of --dataset_name, --train_data_dir and --train_shards")
    if getattr(args, "train_shards", None) is not None:
        args.streaming = True  # shards are always streamed
    if getattr(args, "streaming", False):
        if args.max_train_steps is None:
            raise ValueError("--streaming needs --max_train_steps: a stream has no length to count epochs by")
        if args.shuffle_buffer_size < 0:
            raise ValueError(
                f"--shuffle_buffer_size must be >= 0 (0: the stream's order), got {args.shuffle_buffer_size}"
            )
        if getattr(args, "max_bad_samples", 0) < 0:
            raise ValueError(f"--max_bad_samples must be >= 0 (0: stop at the first), got {args.max_bad_samples}")
    _positive(args, "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps")
    _positive(args, "logging_steps", "num_validation_images", "max_nonfinite_steps")
    _positive(args, "resolution", "max_train_samples", "num_epochs", "max_train_steps", allow_none=True)
    _positive(args, "checkpoints_total_limit", allow_none=True)
    if args.max_train_steps is None and args.num_epochs is None:
        raise ValueError("give --max_train_steps or --num_epochs")
    if args.learning_rate is None:
        factor = FINETUNE_LR_FACTOR if args.pretrained_model_name_or_path else 1.0
        args.learning_rate = args.default_learning_rate * factor
    if not 0 < args.learning_rate < math.inf:
        raise ValueError(f"--learning_rate must be > 0 and finite, got {args.learning_rate}")
    if args.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    if not 0 <= args.max_grad_norm < math.inf:  # NaN fails too
        raise ValueError(f"--max_grad_norm must be >= 0 (0 disables clipping) and finite, got {args.max_grad_norm}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    if not 0 < args.adam_epsilon < math.inf:
        raise ValueError(f"--adam_epsilon must be > 0 and finite, got {args.adam_epsilon}")
    if not 0 <= args.adam_weight_decay < math.inf:
        raise ValueError(f"--adam_weight_decay must be >= 0 and finite, got {args.adam_weight_decay}")
    if not 0.0 <= args.ema_max_decay < 1.0:
        raise ValueError(f"--ema_max_decay must be in [0, 1), got {args.ema_max_decay}")
    for name in ("ema_inv_gamma", "ema_power"):  # EMA decay 1 − (1 + step/γ)^−power: both must be > 0
        if not 0 < getattr(args, name) < math.inf:
            raise ValueError(f"--{name} must be > 0 and finite, got {getattr(args, name)}")
    _positive(args, "ddp_timeout")
    if args.dataloader_num_workers is not None and args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}")
    if args.eval_fid_every < 0:
        raise ValueError(f"--eval_fid_every must be >= 0 (0 disables it), got {args.eval_fid_every}")
    _positive(args, "eval_num_samples")
    if args.eval_fid_every and args.eval_feature_extractor == "inception" and not args.eval_inception_weights:
        raise ValueError("--eval_feature_extractor inception needs --eval_inception_weights (nothing is downloaded)")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/ddpm-digits)")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        raise ValueError(
            "--overwrite_output_dir and --resume_from_checkpoint contradict each other: the first removes the "
            "checkpoints the second continues from; pass one of them"
        )


def check_resolution(unet, resolution: int) -> None:
    """`--resolution` must be divisible by the UNet's total downsampling factor (2 per extra block)."""
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % factor != 0:
        raise ValueError(
            f"--resolution must be divisible by the UNet's downsampling factor {factor}, got {resolution}"
        )
