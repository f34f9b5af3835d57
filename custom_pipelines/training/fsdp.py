"""Sharded training (`accelerate launch --use_fsdp`, FSDP2: `torch.distributed.fsdp.fully_shard`) for every family.

accelerate 1.16 reads `--use_fsdp` (env `ACCELERATE_USE_FSDP`) only for GPU-like devices: on CPU its state stays
`MULTI_CPU` and the run would silently be plain DDP. `enable_fsdp` makes the request real there (its FSDP2 path
works on CPU with gloo) and refuses what it cannot honour, so a run is never quietly unsharded.

What the trainer does differently under FSDP, all here:
- each model is prepared with its optimizer, rank 0's initial weights broadcast first (as DDP does), its blocks (UNet
  down/up/mid blocks, a VAE's blocks, a generator's layers) auto-wrapped; a GAN's two models are two FSDP roots, and
  a discriminator whose loss differentiates its gradient (R1, WGAN-GP) stays gathered through that double backward
  (`gathered_through_backward`): its gradients and optimizer state are sharded, its weights are not in that
  step;
- EMA runs over each rank's local shards (no communication per step); checkpoints hold the shards of every rank
  (accelerate's DCP model/optimizer folders, one EMA file per rank), so a resume needs the same world size;
- sampling and the final `save_pipeline` gather the full (EMA) weights on every rank into a plain, unsharded copy of
  each model on the main process, which writes ordinary safetensors that `from_pretrained` loads.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env


def fsdp_requested() -> bool:
    """`accelerate launch --use_fsdp` (or a config file with `distributed_type: FSDP`) asked for sharding."""
    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def enable_fsdp(accelerator: Accelerator) -> None:
    """Make `--use_fsdp` real where accelerate would drop it (multi-process CPU), or refuse it; a no-op without it."""
    if not fsdp_requested():
        return
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch sets
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin = plugin
        # before any `prepare`, so that accelerate takes its FSDP2 path; in PartialState's shared state too, which
        # every later `AcceleratorState()` (accelerate makes them internally) copies over its own
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.distributed_type = DistributedType.FSDP
    elif state.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"--use_fsdp needs 2 or more processes on CPU or GPU (accelerate's distributed type here is "
            f"{state.distributed_type.value}, {state.num_processes} process(es)); launch with --num_processes 2 or "
            "more, or without --use_fsdp"
        )
    version = int(state.fsdp_plugin.fsdp_version)
    if version != 2:
        raise ValueError(f"--fsdp_version must be 2 (fully_shard), got {version}: FSDP1 is not supported")


def check_deepspeed(accelerator: Accelerator, models: dict) -> None:
    """What the trainer supports under accelerate's DeepSpeed plugin (not runnable here: it needs CUDA): ZeRO stages
    1 and 2 of one trained model. The trainer never reads `.config` from a prepared model (it unwraps first, which
    gives the module inside the DeepSpeed engine) and saves that module's weights, whole on every rank under ZeRO-1/2.
    ZeRO-3 partitions the weights themselves (a gather before saving, not done here) and a DeepSpeed engine holds
    one model and its optimizer, so a GAN's two are refused: use FSDP for those."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    stage = int(accelerator.state.deepspeed_plugin.zero_stage)
    if stage == 3:
        raise ValueError("DeepSpeed ZeRO-3 is not supported by the trainer (its saved weights would be partitions): "
                         "use zero_stage 2 (training/accelerate_configs/deepspeed_zero2.yaml) or FSDP")  # fmt: skip
    if len(models) > 1:
        raise ValueError(f"DeepSpeed trains one model per engine; this script trains {sorted(models)}: use FSDP "
                         "(training/accelerate_configs/fsdp.yaml) or DDP")  # fmt: skip


def block_class_names(model: torch.nn.Module) -> list[str]:
    """The classes that get their own FSDP unit: the elements of the model's `*blocks` lists at any depth (UNet
    down/up blocks, a VAE encoder's and decoder's blocks) and of the `ModuleList`s directly on the model (a
    generator's layers), and every `mid_block`; never smaller pieces (a Linear in an attention's `to_out`)."""
    names = []
    for name, module in model.named_modules():
        leaf = name.split(".")[-1]
        children = []
        if isinstance(module, torch.nn.ModuleList) and (leaf.endswith("blocks") or "." not in name):
            children = list(module)
        elif leaf == "mid_block" and module is not model:
            children = [module]

        for child in children:
            if any(True for _ in child.parameters()) and type(child).__name__ not in names:
                names.append(type(child).__name__)
    return names


def prepare_sharded(accelerator: Accelerator, models: dict, optimizers: dict, dataloader):
    """`accelerator.prepare` under FSDP2: one model and its optimizer at a time, each with its own block policy.

    accelerate pairs the i-th prepared optimizer with the i-th prepared model when it saves a checkpoint, so every
    trained model needs its optimizer here."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    missing = [name for name in models if name not in optimizers]
    if missing:
        raise ValueError(f"under FSDP every trained model needs an optimizer; {missing} have none")
    plugin = accelerator.state.fsdp_plugin
    policy = plugin.auto_wrap_policy.func if hasattr(plugin.auto_wrap_policy, "func") else plugin.auto_wrap_policy
    user_classes = plugin.transformer_cls_names_to_wrap
    prepared_models, prepared_optimizers = {}, {}
    for name, model in models.items():
        if policy is transformer_auto_wrap_policy:  # accelerate binds the policy to the first model: reset per model
            plugin.auto_wrap_policy = transformer_auto_wrap_policy
            plugin.transformer_cls_names_to_wrap = user_classes or block_class_names(model)
        _broadcast_from_main(model)
        prepared_models[name], prepared_optimizers[name] = accelerator.prepare(model, optimizers[name])
    return prepared_models, prepared_optimizers, accelerator.prepare(dataloader) if dataloader is not None else None


def _broadcast_from_main(model: torch.nn.Module) -> None:
    """Rank 0's initial weights on every rank, as DDP starts: `fully_shard` keeps each rank's own slice of its own
    model, and ranks seeded apart (`set_seed(device_specific=True)`) built different random ones."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def broadcast_buffers(models: dict) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, as DDP does before each forward. FSDP shards
    parameters only: each rank's buffers would follow its own batches, and the checkpoint (one copy of a replicated
    tensor) and the saved model would hold one rank's."""
    with torch.no_grad():
        for model in models.values():
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: writing into it writes the parameter), a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """This rank's shards of `model`'s parameters; each keeps the parameter's `requires_grad` (EMA reads it).

    A forward without backward (a GAN's generator under `no_grad` on a critic-only step) leaves the root unit's
    parameters gathered (FSDP reshards the root only after backward): reshard first, so they are the shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    with torch.enable_grad():
        return [local_tensor(p) for p in model.parameters()]


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """`flag` on any rank (one all-reduce): sharded ranks see different tensors but must decide together."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def shard_numels(accelerator: Accelerator, models: dict) -> dict[str, list[int]]:
    """Parameter elements each rank holds, per model (every rank: the whole model, unless sharded)."""
    out = {}
    for name, model in models.items():
        local = sum(local_tensor(p).numel() for p in model.parameters())
        gathered = accelerator.gather(torch.tensor([local], device=accelerator.device, dtype=torch.int64))
        out[name] = [int(n) for n in gathered.cpu().tolist()]
    return out


def _unsharded_class(model: torch.nn.Module) -> type:
    """`fully_shard` swaps a module's class for `FSDP<Class>(FSDPModule, Class)`: the class it came from."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def _plain_copy(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """A fresh, unsharded module of `model`'s structure: from its config, or for a training wrapper around config
    models (a GAN's `GeneratorForward`, the VAE's `VAETrainingForward`, CycleGAN's generator and discriminator pairs)
    its `rewrap` of fresh copies of them, in `children()` order."""
    if hasattr(model, "config"):
        return _unsharded_class(model).from_config(model.config)
    inner = [child for child in model.children() if hasattr(child, "config")]
    if hasattr(model, "rewrap") and inner:
        return model.rewrap(*(_plain_copy(name, child) for child in inner))
    raise ValueError(f"model {name!r} ({_unsharded_class(model).__name__}) has no config to rebuild it unsharded from")


@contextlib.contextmanager
def gathered_through_backward(accelerator: Accelerator, model: torch.nn.Module, active: bool = True):
    """A penalty on the gradient (R1, WGAN-GP) backpropagates through the model's backward graph a second time;
    FSDP frees the gathered weights after the first backward, so the second would read freed storage. Inside, the
    model's units stay gathered after backward (gradients are still reduce-scattered to the shards); on leaving they
    are resharded. A no-op unless sharded and `active`."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)] if active and is_sharded(accelerator) else []
    for unit in units:
        unit.set_reshard_after_backward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_backward(True, recurse=False)
            unit.reshard()


def gather_full_models(accelerator: Accelerator, models: dict) -> dict[str, torch.nn.Module]:
    """Every rank: all-gather each model's full weights; the main process gets plain (unsharded) copies built from the
    model's config, on the device, in eval mode; the other ranks get {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the full tensors on rank 0 only
    full = {}
    for name, model in models.items():
        state_dict = get_model_state_dict(model, options=options)
        if accelerator.is_main_process:
            copy = _plain_copy(name, model)
            copy.load_state_dict(state_dict, strict=True)
            full[name] = copy.to(accelerator.device).eval()
    return full
