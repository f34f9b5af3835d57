"""LoRA fine-tuning in the trainer core: the flags, the adapter put into the loaded model (its base frozen), and the
trainer's hooks: only adapter weights in the optimizer and the EMA, checkpoints holding the adapter alone (accelerate
save/load hooks), and at the end an adapter folder instead of a pipeline:

    <output_dir>/pytorch_lora_weights.safetensors   diffusers' layout (`unet.` + peft names, LoraConfig metadata)
    <output_dir>/README.md                          model card: base_model, tags lora / text-to-image / ...
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from .config import DEFAULT_TARGET_MODULES, make_lora_config

if TYPE_CHECKING:
    import torch

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # = files.LORA_WEIGHT_NAME (that module imports torch)
TRAIN_ADAPTER = "default"  # the name of the adapter being trained (peft's default)
CHECKPOINT_FILE = "lora_{name}.safetensors"  # in a checkpoint folder: the adapter of trained model `name`


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    """`--lora_rank` (off by default: full fine-tuning), `--lora_alpha`, `--lora_dropout`, `--lora_target_modules`."""
    defaults = "; ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_TARGET_MODULES.items())
    group = parser.add_argument_group(
        "LoRA",
        "Fine-tune a low-rank adapter (Hu et al. 2021, through peft) on --pretrained_model_name_or_path instead of "
        "every weight; the output is an adapter folder (pytorch_lora_weights.safetensors in diffusers' layout).",
    )
    group.add_argument("--lora_rank", type=int, default=None, help="r ≥ 1: train a LoRA of this rank (default: off)")
    group.add_argument("--lora_alpha", type=float, default=None, help="α > 0; the update is (α/r)·BA (default: r)")
    group.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapter's input, in [0, 1)")
    group.add_argument(
        "--lora_target_modules",
        nargs="+",
        default=None,
        help=f"layer names to adapt (a full name or its last parts); default per model: {defaults}",
    )


def validate_lora_args(args: argparse.Namespace) -> None:
    """ValueError for a bad LoRA flag (naming it and its range) or a combination LoRA cannot run."""
    rank = getattr(args, "lora_rank", None)
    if rank is None:
        given = [f for f in ("lora_alpha", "lora_target_modules") if getattr(args, f, None) is not None]
        if getattr(args, "lora_dropout", 0.0):
            given.append("lora_dropout")
        if given:
            raise ValueError(f"--{given[0]} needs --lora_rank (LoRA is off without it)")
        return
    if rank < 1:
        raise ValueError(f"--lora_rank must be an integer >= 1, got {rank}")
    if args.lora_alpha is not None and not args.lora_alpha > 0:
        raise ValueError(f"--lora_alpha must be > 0, got {args.lora_alpha}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not getattr(args, "pretrained_model_name_or_path", None):
        raise ValueError("--lora_rank needs --pretrained_model_name_or_path: a LoRA adapts a trained base model")
    if getattr(args, "use_fsdp", False):
        raise ValueError("--lora_rank does not run with --use_fsdp: an adapter is small, train it with DDP")


def lora_enabled(args) -> bool:
    return getattr(args, "lora_rank", None) is not None


def apply_lora(model: torch.nn.Module, args) -> torch.nn.Module:
    """With `--lora_rank`: freeze `model` and inject the adapter to train (A from the seeded global RNG, B = 0, so
    step 0 is the base model). ValueError for a target module the model does not have. Without it: `model`."""
    if not lora_enabled(args):
        return model
    from . import adapters

    config = make_lora_config(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    model.requires_grad_(False)
    adapters.add_adapter(model, config, TRAIN_ADAPTER)
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def attach(trainer) -> bool:
    """Make `trainer` a LoRA run when `--lora_rank` is set: hooks for checkpoints, the adapter folder as the final
    save, the LoRA card and an adapter-only push. Returns whether it did."""
    args = trainer.args
    if not lora_enabled(args):
        return False
    from . import adapters

    accelerator = trainer.accelerator

    def names_of(models) -> list[tuple[int, str]]:
        found = []
        for i, model in enumerate(models):
            name = next((n for n, m in trainer.models.items() if m is model), None)
            if name is not None and adapters.lora_layers(accelerator.unwrap_model(model)):
                found.append((i, name))
        return found

    def save_hook(models, weights, output_dir):
        for i, name in reversed(names_of(models)):
            if accelerator.is_main_process:
                from safetensors.torch import save_file

                model = accelerator.unwrap_model(models[i])
                state = {k: v.detach().cpu().contiguous() for k, v in _raw_adapter_state(model).items()}
                save_file(state, os.path.join(output_dir, CHECKPOINT_FILE.format(name=name)))
            if i < len(weights):
                weights.pop(i)  # accelerate writes no copy of the frozen base

    def load_hook(models, input_dir):
        from safetensors.torch import load_file

        for i, name in reversed(names_of(models)):
            path = os.path.join(input_dir, CHECKPOINT_FILE.format(name=name))
            if not os.path.isfile(path):
                raise ValueError(f"{input_dir} holds no {os.path.basename(path)}: it is not a LoRA run's checkpoint")
            model = accelerator.unwrap_model(models.pop(i))
            _load_raw_adapter_state(model, load_file(path))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    trainer.save_pipeline = save_adapter_folder
    trainer.write_card = write_lora_model_card
    trainer.push_folder = push_adapter_folder
    return True


def _raw_adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by its full name (exact resume: the training adapter, nothing else)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _load_raw_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    import torch

    params = _raw_adapter_state(model)
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(
            f"the checkpoint's LoRA does not fit this run's (other --lora_rank / --lora_target_modules?): "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != state[name].shape:
                raise ValueError(f"checkpoint LoRA tensor {name} has shape {tuple(state[name].shape)}, the run's "
                                 f"{tuple(param.shape)} (another --lora_rank?)")  # fmt: skip
            param.copy_(state[name].to(param.device, param.dtype))


def save_adapter_folder(trainer, output_dir: str) -> str:
    """The final save of a LoRA run (on the main process, EMA weights swapped in): the adapter file, staged in a
    `.tmp-save-*` folder and moved into place, so a crash leaves the old file or the new one, never a part."""
    from custom_pipelines.faults import fault_point
    from custom_pipelines.io import make_dir_public

    from . import adapters, files

    for debris in glob.glob(os.path.join(glob.escape(output_dir), ".tmp-save-*")):
        shutil.rmtree(debris, ignore_errors=True)
    components = {}
    base_model = trainer.args.pretrained_model_name_or_path
    for name in trainer.models:
        model = trainer.unwrap(name)
        if adapters.lora_layers(model):
            state = adapters.adapter_state_dict(model, TRAIN_ADAPTER)
            components[name] = (state, model.peft_config[TRAIN_ADAPTER], files.base_info(model, base_model))
    staging = tempfile.mkdtemp(prefix=".tmp-save-", dir=output_dir)
    make_dir_public(staging)
    files.save_adapter_file(os.path.join(staging, files.LORA_WEIGHT_NAME), components)
    fault_point("save")
    final = os.path.join(output_dir, files.LORA_WEIGHT_NAME)
    os.replace(os.path.join(staging, files.LORA_WEIGHT_NAME), final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def lora_usage_snippet(pipeline_class: str, base_model: str, adapter: str, call_kwargs: dict) -> str:
    kwargs = ", ".join([*(f"{k}={v!r}" for k, v in call_kwargs.items()), "generator=generator"])
    return (
        "import torch\n"
        f"from custom_pipelines import {pipeline_class}\n\n"
        f"pipe = {pipeline_class}.from_pretrained({base_model!r})\n"
        f'pipe.load_lora_weights({adapter!r}, adapter_name="lora")\n'
        'pipe.set_adapters(["lora"], adapter_weights=[1.0])  # 0.5: half way between the base and the LoRA\n'
        "generator = torch.Generator().manual_seed(0)\n"
        f"images = pipe({kwargs}).images\n"
        'images[0].save("sample.png")\n'
    )


def write_lora_model_card(output_dir: str, card, args, tags=()) -> str:
    """README.md of an adapter folder: Hub metadata with `base_model` and the `lora` tags, the sample grid, how to
    load it onto the base, the training flags."""

    from custom_pipelines.hub.cards import base_model_of, card_data
    from custom_pipelines.training.reporting import flags_table, latest_sample_grid, save_card

    from . import files

    base = args.pretrained_model_name_or_path
    data = card_data(
        card.pipeline_class,
        tags=["lora", "diffusers-training", card.family, *tags],
        datasets=[args.dataset_name] if getattr(args, "dataset_name", None) else None,
        base_model=base_model_of(base),
        license="apache-2.0",
    )
    if base_model_of(base) is not None:
        data.base_model_relation = "adapter"
    grid = latest_sample_grid(output_dir)
    samples = f"![samples]({grid})\n" if grid else ""
    rank, alpha = args.lora_rank, args.lora_alpha if args.lora_alpha is not None else float(args.lora_rank)
    content = f"""---
{data.to_yaml()}
---

# {os.path.basename(os.path.abspath(output_dir))}: a LoRA for `{base}`

A LoRA adapter (rank {rank}, α {alpha:g}, peft) fine-tuned from `{base}`: {card.description}
`{files.LORA_WEIGHT_NAME}` holds the adapter alone, in diffusers' LoRA layout (`unet.` + peft names).

{samples}
## Use

```python
{lora_usage_snippet(card.pipeline_class, base, args.hub_model_id or output_dir, card.example_call_kwargs)}```

`pipe.fuse_lora(lora_scale=...)` merges it into the weights, `pipe.unload_lora_weights()` gives the base back.

## Training

{card.training_command()}

{flags_table(args)}
"""
    return save_card(output_dir, content)


def push_adapter_folder(output_dir: str, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the adapter, its card and the grid the card shows (no checkpoints, no base model) as one commit."""
    from huggingface_hub import HfApi

    from custom_pipelines.training.reporting import latest_sample_grid

    from . import files

    allow = [files.LORA_WEIGHT_NAME, "README.md", "loss_curve.png"]
    grid = latest_sample_grid(output_dir)
    if grid:
        allow.append(grid)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        allow_patterns=allow,
        commit_message="Upload LoRA adapter trained with custom_pipelines",
    )
    return str(info)
