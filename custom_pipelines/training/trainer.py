"""The one training loop every script runs on: diffusion (one model, one optimizer) and GANs (two of each,
n_critic steps, growing stages) alike.

A script builds its models and optimizers, writes `training_step(trainer, batch) -> logs` (calling
`trainer.backward_and_step(name, loss)` for each optimizer it updates), `sample_images(trainer) -> [N, C, H, W]`
and `save_pipeline(trainer, output_dir)`, and hands them to `Trainer`. The trainer owns everything else: data,
accelerate, gradient accumulation and clipping, lr schedules, EMA, checkpoints and resume, logging, validation
grids, the loss curve, the model card and the Hub push.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    gather_object,
    parse_flag_from_env,
    send_to_device,
    set_seed,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from custom_pipelines.cli import CommandFailed
from custom_pipelines.faults import fault_point
from custom_pipelines.io import save_image, write_json
from custom_pipelines.lora import training as lora_training
from custom_pipelines.models.attention import resolve_attention_backend, set_attention_backend
from custom_pipelines.precision import PrecisionChoice, resolve_mixed_precision

from . import fsdp
from .checkpoint import load_checkpoint, read_checkpoint_state, resolve_checkpoint, save_checkpoint
from .compile_check import install_compile_check, is_compiled
from .data import (
    load_train_dataset,
    make_dataloader,
    make_image_dataloader,
    make_streaming_dataloader,
    stream_loader,
)
from .output_dir import SUMMARY_FILE
from .preflight import apply_output_dir, check_push_possible, prepare_output_dir
from .reporting import (
    ModelCardInfo,
    StepTimer,
    append_metrics,
    image_grid,
    peak_rss_mib,
    plot_loss_curve,
    push_folder_to_hub,
    write_model_card,
)
from .streaming import STREAMING_SCRIPTS, StreamingExamples, is_stream

logger = get_logger(__name__)


def resolve_run_precision(
    requested: str, device: torch.device | str | None = None, resume_from: str | None = None
) -> PrecisionChoice:
    """`--mixed_precision` (default `auto`) → what this run uses on `device` (default: the one the launch
    environment names).

    A run resumed from a checkpoint keeps the precision it began with when `auto` is asked for again: a resumed run
    is the same run, and its result must not depend on what a timing probe says on the day it is resumed."""
    if device is None:
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        use_cpu = use_cpu or not torch.cuda.is_available()
        device = torch.device("cpu") if use_cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    recorded = read_checkpoint_state(resume_from).get("mixed_precision") if resume_from else None
    if requested == "auto" and recorded in ("no", "bf16", "fp16"):
        if recorded == "fp16" and torch.device(device).type != "cuda":
            raise ValueError(
                f"--mixed_precision auto: {resume_from} was trained in fp16, which needs a CUDA device; resume it on "
                "one, or pass --mixed_precision no or bf16 to continue it here"
            )
        return PrecisionChoice(recorded, requested, f"kept from {os.path.basename(resume_from)}, where the run began")
    try:
        choice = resolve_mixed_precision(requested, device)
    except ValueError as err:
        raise ValueError(f"--{err}") from None
    if recorded is not None and recorded != choice.mixed_precision:
        logger.warning(
            f"resuming a run trained in {recorded} with --mixed_precision {requested} ({choice.mixed_precision}): "
            "it continues, but will not match an uninterrupted run bit for bit",
            main_process_only=True,
        )
    return choice


def agree_across_ranks(choice: PrecisionChoice) -> PrecisionChoice:
    """Every rank must train in the same precision. Each `auto` probe times its own rank, under its own load, so
    when they disagree all take the safe one, fp32 (an explicit request is the same on every rank anyway)."""
    state = PartialState()
    if state.num_processes == 1:
        return choice
    choices = gather_object([choice.mixed_precision])
    if len(set(choices)) == 1:
        return choice
    return PrecisionChoice("no", choice.requested, f"fp32: the ranks' probes disagreed ({choices})")


def create_accelerator(args) -> Accelerator:
    """Accelerator with TensorBoard logging under `<output_dir>/logs`, a seedable sampler (exact resume), seed, and
    the precision `--mixed_precision` resolves to (`args.precision` records the choice and the reason)."""
    # a rank that never reaches a collective fails the run after this long instead of hanging it
    init_kwargs = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=getattr(args, "ddp_timeout", 1800)))
    # the process group first (the Accelerator reuses it), so the ranks can agree on the precision it is built with
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **init_kwargs.to_kwargs())  # as accelerate's
    resume_from = resolve_checkpoint(getattr(args, "resume_from_checkpoint", None), args.output_dir)
    if getattr(args, "push_to_hub", False):
        check_push_possible(args, state)  # offline, no token, bad repo id: fail now, not after training
    prepare_output_dir(args, resume_from, state)  # refuse or clear another run's folder, trim a resumed one
    args.precision = agree_across_ranks(resolve_run_precision(args.mixed_precision, state.device, resume_from))
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.precision.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[init_kwargs],
    )
    fsdp.enable_fsdp(accelerator)  # --use_fsdp: sharded for real (accelerate drops it on CPU) or refused, never DDP
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed, device_specific=True)  # each rank draws its own noise; DDP syncs the initial weights
    logger.info(
        f"precision: {args.precision.mixed_precision} (--mixed_precision {args.mixed_precision}; "
        f"{args.precision.reason})",
        main_process_only=True,
    )
    return accelerator


FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # devices with torch.optim.AdamW(fused=True) kernels since torch 2.4


def adamw(params: Iterable[torch.nn.Parameter], args, lr: float | None = None, betas=None) -> torch.optim.Optimizer:
    """AdamW from the common flags: PyTorch's fused kernel on CPU and CUDA.

    Fused is several times faster than `foreach=True`, which on CPU loops over the parameters one kernel at a time
    (docs/performance.md); elsewhere it falls back to `foreach`."""
    # fused kernels take no DTensor (FSDP's sharded parameters); foreach does
    fused = PartialState().device.type in FUSED_ADAMW_DEVICES and not fsdp.fsdp_requested()
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad],  # a LoRA run: the adapter only, its base is frozen
        lr=lr if lr is not None else args.learning_rate,
        betas=betas if betas is not None else (args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        fused=fused or None,
        foreach=None if fused else True,
    )


def constant_then_linear_schedule(optimizer, num_warmup_steps: int, num_training_steps: int):
    """Linear warmup, the base lr until half of the steps, then linear decay to 0 at `num_training_steps`."""
    half = max(num_training_steps // 2, num_warmup_steps)

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / num_warmup_steps  # as diffusers' warmups
        if step < half:
            return 1.0
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - half))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many updates in a row had NaN/inf gradients."""


class Trainer:
    """Runs `training_step` over the data until `--max_train_steps` optimizer updates (or `--num_epochs`).

    Args:
        args: the parsed common flags (`custom_pipelines.training.add_common_args`) plus the script's own.
        accelerator: from `create_accelerator(args)`.
        models: trained modules by name, e.g. `{"unet": unet}` or `{"generator": g, "discriminator": d}`.
        optimizers: one optimizer per updated model, same names; each gets its own lr scheduler.
        training_step: `fn(trainer, batch) -> dict[str, Tensor | float]` for one (micro-)batch.
        sample_images: `fn(trainer) -> Tensor[N, C, H, W] in [0, 1]`, run with EMA weights on the main process.
        save_pipeline: `fn(trainer, output_dir)`, run with EMA weights at the end; saves the whole pipeline.
        build_pipeline: `fn(trainer) -> DiffusionPipeline` on the current (EMA-swapped) weights; needed for
            `--eval_fid_every`. `eval_pipeline_kwargs` go to its calls (e.g. `num_inference_steps`).
        ema_models: names of models that keep an EMA copy (used for validation and the saved pipeline).
        frozen_models: networks the step uses but does not train (a VAE, a text encoder, a perceptual network):
            moved to the device, cast to the compute dtype, eval mode, no gradients, not in checkpoints;
            available as `trainer.frozen[name]`.
        optimizer_step_every: optimizer name → k when it steps once every k updates (a GAN generator under
            `n_critic`); its lr schedule and warm-up are sized to its own number of steps. Default 1.
        image_channels, resolution: what the data is turned into (the built-in image path).
        dataset: the training examples; default: `--dataset_name` / `--train_data_dir` as images.
        collate_fn: `fn(list of dataset items) -> batch dict`; when given, `dataset` is used as it is (LR/HR
            pairs, two domains, cached latents, image + caption). Without it the items are images (and labels),
            transformed to `pixel_values` in [-1, 1].
        stream_item: with `--streaming`, `fn(raw example, generator) -> item` that `collate_fn` batches (all its
            randomness from the generator, keyed by the example's place in the stream: exact resume).
        extra_state: optional object with `state_dict()` / `load_state_dict()` (e.g. a growing stage, image
            pools), saved in every checkpoint: JSON values, plus tensors (stored as safetensors). Every rank calls
            `state_dict()` (it may gather across ranks); rank 0 writes it.
        family, pipeline_class, description, script, example_call_kwargs: for the model card (`script` is the
            training script's `__file__`; `example_call_kwargs` the pipeline call its usage snippet shows,
            `example_setup` the code before it, `uses_generator=False` for a deterministic pipeline).
    """

    def __init__(
        self,
        args,
        accelerator: Accelerator,
        *,
        models: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        training_step: Callable[[Trainer, dict], dict],
        sample_images: Callable[[Trainer], torch.Tensor],
        save_pipeline: Callable[[Trainer, str], Any],
        ema_models: Iterable[str] = (),
        frozen_models: dict[str, torch.nn.Module] | None = None,
        optimizer_step_every: dict[str, int] | None = None,
        image_channels: int = 3,
        resolution: int,
        extra_state: Any = None,
        family: str,
        pipeline_class: str,
        description: str = "",
        script: str | None = None,
        example_call_kwargs: dict | None = None,
        example_setup: str = "",
        uses_generator: bool = True,
        dataset=None,
        collate_fn: Callable[[list], dict] | None = None,
        stream_item: Callable[[dict, torch.Generator], dict] | None = None,
        build_pipeline: Callable[[Trainer], Any] | None = None,
        eval_pipeline_kwargs: dict | None = None,
    ):
        frozen = dict(frozen_models or {})
        _check_names(models, optimizers, frozen, optimizer_step_every or {})
        self.args, self.accelerator = args, accelerator
        self.training_step, self.sample_images, self.save_pipeline = training_step, sample_images, save_pipeline
        self.extra_state = extra_state
        self.card = ModelCardInfo(
            family, pipeline_class, description, script, dict(example_call_kwargs or {}), example_setup, uses_generator
        )
        self.family = family
        self.write_card, self.push_folder = write_model_card, push_folder_to_hub
        self.lora = lora_training.attach(self)  # --lora_rank: adapter-only checkpoints, save, card and push
        self.build_pipeline, self.eval_pipeline_kwargs = build_pipeline, dict(eval_pipeline_kwargs or {})
        if getattr(args, "eval_fid_every", 0) and build_pipeline is None:
            raise ValueError(f"--eval_fid_every is not supported by the {family} script (it gives no build_pipeline)")
        self._eval_reference = None
        self._full_models: dict[str, torch.nn.Module] = {}  # FSDP: unsharded copies while sampling or saving
        self.compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            accelerator.mixed_precision, torch.float32
        )
        self._set_attention(models)  # before prepare, so that a compiled model traces the chosen attention
        if getattr(args, "gradient_checkpointing", False):
            enable_gradient_checkpointing(models)
        # a stream is split across ranks by datasets (never by accelerate) and has no length: its epoch and the
        # batches read in it are counted here, per rank, and kept in checkpoints (exact resume)
        self.streaming = bool(getattr(args, "streaming", False))
        self.data_position = {"epoch": 0, "batches": 0, "bad_samples": 0}
        self._prepare(
            models, optimizers, self._dataloader(dataset, collate_fn, resolution, image_channels, stream_item)
        )
        if not self.streaming and len(self.dataloader) == 0:  # each process's share holds no full batch
            n = accelerator.num_processes
            raise ValueError(
                f"--train_batch_size {args.train_batch_size} × {n} process(es) needs at least "
                f"{args.train_batch_size * n} training examples, the dataset has {len(self.dataset)}: lower "
                "--train_batch_size (it is per process)"
            )
        self.updates_per_epoch = (
            None if self.streaming else _updates_per_epoch(len(self.dataloader), args.gradient_accumulation_steps)
        )
        self.max_train_steps = args.max_train_steps or args.num_epochs * self.updates_per_epoch
        self.optimizer_step_every = {name: (optimizer_step_every or {}).get(name, 1) for name in optimizers}
        self.lr_schedulers = {
            name: accelerator.prepare_scheduler(schedule) for name, schedule in self._lr_schedulers(optimizers).items()
        }
        self.frozen = {name: _freeze(m, accelerator.device, self.compute_dtype) for name, m in frozen.items()}
        self.emas = {name: self._ema(name) for name in (ema_models if args.use_ema else ())}
        apply_output_dir(args)  # everything is checked: now clear the old run or trim the resumed one
        self.global_step = 0
        self.nonfinite_in_a_row = 0
        self.step_timer = StepTimer()
        if args.report_to != "none":
            resume_step = getattr(args, "resume_step", None)  # TensorBoard drops the resumed run's later events
            init_kwargs = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step is not None else {}
            accelerator.init_trackers(f"train_{family}", config=_scalar_config(args), init_kwargs=init_kwargs)

    def _dataloader(self, dataset, collate_fn, resolution: int, image_channels: int, stream_item=None):
        if self.streaming and isinstance(dataset, StreamingExamples):  # the script built the rank's share itself
            self.dataset = dataset
            return stream_loader(self.args, dataset, collate_fn)
        if self.streaming:
            if (collate_fn is not None and stream_item is None) or not (dataset is None or is_stream(dataset)):
                raise ValueError(
                    f"--streaming / --train_shards: the {self.family} script reads its own dataset, which does not "
                    f"stream yet; {', '.join(STREAMING_SCRIPTS)} stream"
                )
            self.dataset, loader = make_streaming_dataloader(
                self.args, resolution, image_channels, stream=dataset, to_item=stream_item, collate_fn=collate_fn
            )
            return loader
        self.dataset = dataset if dataset is not None else load_train_dataset(self.args, resolution)
        if collate_fn is not None:
            return make_dataloader(self.args, self.dataset, collate_fn)
        return make_image_dataloader(self.args, self.dataset, resolution, image_channels)

    def _lr_schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict:
        """One schedule per optimizer, sized by that optimizer's own number of steps (prepared lr schedulers step
        once per process, hence × num_processes)."""
        n, args = self.accelerator.num_processes, self.args
        schedules = {}
        for name, opt in optimizers.items():
            warmup = math.ceil(args.lr_warmup_steps / self.optimizer_step_every[name]) * n
            total = math.ceil(self.max_train_steps / self.optimizer_step_every[name]) * n
            if args.lr_scheduler == "constant_then_linear":
                schedules[name] = constant_then_linear_schedule(opt, warmup, total)
            else:
                schedules[name] = get_scheduler(
                    args.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=total
                )
        return schedules

    def _set_attention(self, models: dict[str, torch.nn.Module]) -> None:
        self.attention_backend = resolve_attention_backend(
            getattr(self.args, "attention_backend", "auto"), self.accelerator.device, self.compute_dtype
        )
        for model in models.values():
            set_attention_backend(model, self.attention_backend)

    def _prepare(self, models, optimizers, dataloader) -> None:
        acc, names_m, names_o = self.accelerator, list(models), list(optimizers)
        to_prepare = None if self.streaming else dataloader  # a stream is already this rank's share
        fsdp.check_deepspeed(acc, models)
        if fsdp.is_sharded(acc):
            self.models, self.optimizers, prepared_loader = fsdp.prepare_sharded(acc, models, optimizers, to_prepare)
        else:
            prepared = acc.prepare(*models.values(), *optimizers.values(), *([to_prepare] if to_prepare else []))
            self.models = dict(zip(names_m, prepared[: len(names_m)]))
            self.optimizers = dict(zip(names_o, prepared[len(names_m) : len(names_m) + len(names_o)]))
            prepared_loader = prepared[-1] if to_prepare else None
        self.dataloader = dataloader if self.streaming else prepared_loader  # sharded: the batches of one process
        if getattr(self.args, "compile_check", "on") == "on":
            for name, model in self.models.items():
                if acc.num_processes == 1:
                    install_compile_check(model, name, low_precision=acc.mixed_precision != "no")
                elif is_compiled(model):
                    logger.warning(f"--compile_check skipped for {name!r}: it runs in single-process training only")

    def _ema(self, name: str) -> EMAModel:
        args = self.args
        return EMAModel(
            self._ema_parameters(name),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
        )

    # ----- used by training steps -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def unwrap(self, name: str) -> torch.nn.Module:
        if name in self._full_models:  # FSDP, inside `sampling_weights`: the gathered, unsharded copy
            return self._full_models[name]
        return self.accelerator.unwrap_model(self.models[name])

    def _ema_parameters(self, name: str) -> list[torch.Tensor]:
        """What the EMA of `name` averages: its parameters, or under FSDP this rank's shards of them."""
        if fsdp.is_sharded(self.accelerator):
            return fsdp.local_parameters(self.models[name])
        if self.lora:
            return lora_training.trainable_parameters(self.unwrap(name))
        return list(self.unwrap(name).parameters())

    def backward_and_step(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Backward `loss`, clip `name`'s gradients, step its optimizer and lr schedule, zero its gradients.

        Under gradient accumulation the optimizer step and zeroing only happen on the last micro-batch
        (accelerate skips them otherwise).
        """
        self.accelerator.backward(loss, retain_graph=retain_graph)
        if self.accelerator.sync_gradients and not self._gradients_finite(name):
            self.optimizers[name].zero_grad(set_to_none=True)  # skip the update; the lr schedule keeps its pace
            self.lr_schedulers[name].step()
            return
        if self.accelerator.sync_gradients and self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.models[name].parameters(), self.args.max_grad_norm)
        self.optimizers[name].step()
        self.lr_schedulers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)

    def _gradients_finite(self, name: str) -> bool:
        """After the all-reduce every process holds the same gradients, so all of them skip a bad update together.
        A NaN/inf update is skipped with a warning; `--max_nonfinite_steps` of them in a row stop the run (the
        weights, the checkpoints and the saved pipeline stay those of the last finite update). A gradient tensor
        whose norm overflows float32 (elements beyond ~1e19) counts as non-finite too: clipping would zero it."""
        grads = [fsdp.local_tensor(p.grad) for p in self.models[name].parameters() if p.grad is not None]
        # one norm per tensor in a single foreach kernel (a NaN/inf element makes its norm NaN/inf), instead of an
        # isfinite + all per tensor: 0.5 ms instead of 3.6 for the digits UNet's 182 tensors on a 2-core CPU
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True
        if fsdp.is_sharded(self.accelerator):  # each rank checked its own shards: skip together
            finite = not fsdp.any_rank(self.accelerator, not finite)
        if finite:
            self.nonfinite_in_a_row = 0
            return True
        self.nonfinite_in_a_row += 1
        limit = getattr(self.args, "max_nonfinite_steps", 10)
        logger.warning(
            f"step {self.global_step + 1}: non-finite gradients of {name!r} (NaN/inf loss?): update skipped "
            f"({self.nonfinite_in_a_row} in a row, the run stops at {limit})"
        )
        if self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} updates in a row had NaN/inf gradients (model {name!r}, step "
                f"{self.global_step + 1}): stopped without saving them. Lower --learning_rate, keep --max_grad_norm "
                f"> 0 or train in fp32 (--mixed_precision no); resume from the last checkpoint in "
                f"{self.args.output_dir}"
            )
        return False

    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily swap the EMA weights into the models (for validation and the saved pipeline)."""
        for name, ema in self.emas.items():
            ema.store(self._ema_parameters(name))
            ema.copy_to(self._ema_parameters(name))
        try:
            yield
        finally:
            for name, ema in self.emas.items():
                ema.restore(self._ema_parameters(name))

    @contextlib.contextmanager
    def sampling_weights(self):
        """The EMA weights in `unwrap(name)` on the main process: swapped in place, or under FSDP gathered into
        unsharded copies (then every rank must enter: the gather is a collective)."""
        if not fsdp.is_sharded(self.accelerator):
            with self.ema_weights() if self.accelerator.is_main_process else contextlib.nullcontext():
                yield
            return
        with self.ema_weights():
            self._full_models = fsdp.gather_full_models(self.accelerator, self.models)
        try:
            yield
        finally:
            self._full_models = {}

    # ----- the loop ---------------------------------------------------------------------------------------------
    def train(self) -> None:
        args, acc = self.args, self.accelerator
        resumed_from = self._maybe_resume()
        examples = "streamed" if self.streaming else f"{len(self.dataset)} examples"
        logger.info(
            f"training {self.family}: {examples}, {acc.num_processes} process(es), batch "
            f"{args.train_batch_size}×{args.gradient_accumulation_steps}, {self.max_train_steps} steps"
            + (f", resumed at step {self.global_step} from {resumed_from}" if resumed_from else ""),
            main_process_only=True,
        )
        progress = tqdm(total=self.max_train_steps, initial=self.global_step, disable=not acc.is_local_main_process)
        pending: dict[str, list] = {}
        while self.global_step < self.max_train_steps:
            epoch_started_at = self.data_position["batches"]  # > 0: a resumed stream, part of the epoch done
            epoch, loader = self._epoch_loader()
            updates_before, exhausted = self.global_step, True
            for batch in loader:
                if self.streaming:
                    batch = self._count_bad_samples(send_to_device(batch, acc.device))
                    self.data_position["batches"] += 1
                with acc.accumulate(*self.models.values()):
                    logs = self.training_step(self, batch)
                for key, value in (logs or {}).items():
                    pending.setdefault(key, []).append(value.detach() if torch.is_tensor(value) else value)
                if not acc.sync_gradients:
                    continue
                self._after_update()
                self.step_timer.tick(self.global_step)
                progress.update(1)
                if self.global_step % args.logging_steps == 0 or self.global_step == self.max_train_steps:
                    progress.set_postfix(self._log(pending))
                    pending = {}
                if self.global_step >= self.max_train_steps:
                    exhausted = False
                    break
            if self.streaming and exhausted:
                self.data_position.update(epoch=epoch + 1, batches=0)
            resumed_at_its_end = self.streaming and epoch_started_at > 0
            if self.global_step == updates_before and not resumed_at_its_end:  # an empty epoch would loop forever
                raise RuntimeError(f"epoch {epoch} gave no optimizer update: the dataloader has too few batches")
        progress.close()
        self._finish()

    def _count_bad_samples(self, batch: dict) -> dict:
        """A streamed batch without its undecodable examples (`streaming.collate_stream`), counted over all ranks
        against `--max_bad_samples`; every rank stops together when the count passes it or a batch has none left."""
        bad = batch.pop("bad_samples", [])
        for reason in bad:
            logger.warning(f"skipped an example whose image cannot be decoded ({reason})")
        local = self.data_position.get("bad_samples", 0) + len(bad)
        self.data_position["bad_samples"] = local
        total, empty = local, float(not batch)
        if self.accelerator.num_processes > 1:  # one small all-reduce, so that every rank decides alike
            counts = torch.tensor([float(local), empty], device=self.accelerator.device)
            total, empty = (float(v) for v in self.accelerator.reduce(counts, reduction="sum").tolist())
        limit = self.args.max_bad_samples
        if total > limit:
            raise ValueError(
                f"{int(total)} streamed examples could not be decoded, more than --max_bad_samples {limit} (the "
                "warnings above name them): repair or drop those shards, or raise --max_bad_samples"
            )
        if empty:
            raise ValueError(
                f"every example of a batch of {self.args.train_batch_size} could not be decoded (the warnings above "
                "name them): the shards hold no readable images there"
            )
        return batch

    def _epoch_loader(self):
        """(epoch, the loader over the rest of it): where an interrupted run stopped, after a resume."""
        args, acc = self.args, self.accelerator
        if self.streaming:
            epoch, done = self.data_position["epoch"], self.data_position["batches"]
            self.dataset.set_epoch(epoch)
            drop = self.dataset.resume_after(done) if done else 0
            return epoch, itertools.islice(self.dataloader, drop, None)
        epoch, skip = divmod(self.global_step, self.updates_per_epoch)
        self.dataloader.set_epoch(epoch)
        # datasets that draw per (epoch, item): unpaired pairs, the core's image items (the loader's dataset)
        for source in {id(d): d for d in (self.dataset, self.dataloader.dataset)}.values():
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)
        if skip:
            return epoch, acc.skip_first_batches(self.dataloader, skip * args.gradient_accumulation_steps)
        return epoch, self.dataloader

    def _after_update(self) -> None:
        self.global_step += 1
        if fsdp.is_sharded(self.accelerator):  # DDP's buffer broadcast (BatchNorm statistics), which FSDP lacks
            fsdp.broadcast_buffers(self.models)
        for name, ema in self.emas.items():
            ema.step(self._ema_parameters(name))
        fault_point("step", self.global_step)  # the kill tests' hook (custom_pipelines.faults): a no-op unless set
        if self.global_step % self.args.checkpointing_steps == 0:
            self.save_checkpoint()
        if self.global_step % self.args.validation_steps == 0:
            self.validate()
        if self.args.eval_fid_every and self.global_step % self.args.eval_fid_every == 0:
            self.evaluate()

    def _log(self, pending: dict[str, list]) -> dict[str, float]:
        # One host sync per logging interval, not per step.
        logs = {
            k: float(torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vs]).mean())
            for k, vs in pending.items()
        }
        for name, schedule in self.lr_schedulers.items():  # `lr` alone, or `lr_<name>` for each of several
            logs["lr" if len(self.lr_schedulers) == 1 else f"lr_{name}"] = schedule.get_last_lr()[0]
        self.accelerator.log(logs, step=self.global_step)
        if self.accelerator.is_main_process:
            append_metrics(self.args.output_dir, self.global_step, logs)
        return {k: round(v, 5) for k, v in logs.items()}

    # ----- checkpoints --------------------------------------------------------------------------------------------
    def check_weights_finite(self, what: str) -> None:
        """Refuse to save NaN/inf weights (a checkpoint or pipeline that could only produce garbage)."""
        for name in self.models:
            named = self.accelerator.unwrap_model(self.models[name]).named_parameters()
            bad = [n for n, p in named if not torch.isfinite(fsdp.local_tensor(p)).all()]
            for ema in [self.emas[name]] if name in self.emas else []:
                bad += [f"ema:{i}" for i, p in enumerate(ema.shadow_params) if not torch.isfinite(p).all()]
            if fsdp.is_sharded(self.accelerator) and fsdp.any_rank(self.accelerator, bool(bad)) and not bad:
                bad = ["(a shard on another rank)"]
            if bad:
                raise NonFiniteLossError(
                    f"{what} not saved: {len(bad)} tensors of {name!r} hold NaN/inf (first: {bad[0]}); the earlier "
                    f"checkpoints in {self.args.output_dir} are intact"
                )

    def save_checkpoint(self) -> str:
        self.check_weights_finite(f"checkpoint-{self.global_step}")
        state = {
            "world_size": self.accelerator.num_processes,
            "distributed_type": self.accelerator.distributed_type.value,
            "mixed_precision": self.accelerator.mixed_precision,  # a resume with `auto` keeps it
            "extra": self.extra_state.state_dict() if self.extra_state is not None else None,
        }
        if self.streaming:  # every rank's place in its own share of the stream
            positions = [dict(self.data_position)]
            state["data_positions"] = gather_object(positions) if self.accelerator.num_processes > 1 else positions
        return save_checkpoint(
            self.accelerator,
            self.args.output_dir,
            self.global_step,
            self.emas,
            state,
            self.args.checkpoints_total_limit,
            sharded_ema=fsdp.is_sharded(self.accelerator),
        )

    def _maybe_resume(self) -> str | None:
        path = resolve_checkpoint(self.args.resume_from_checkpoint, self.args.output_dir)
        if path is None:
            if self.args.resume_from_checkpoint:
                logger.info("no checkpoint to resume from yet: starting a fresh run", main_process_only=True)
            return None
        state = load_checkpoint(self.accelerator, path, self.emas, sharded_ema=fsdp.is_sharded(self.accelerator))
        self.global_step = int(state["global_step"])
        saved_world = state.get("world_size")
        if saved_world is not None and saved_world != self.accelerator.num_processes:
            logger.warning(
                f"{path} was written by {saved_world} process(es), this run has {self.accelerator.num_processes}: "
                "it continues (the data order and random streams are split differently), but will not match an "
                "uninterrupted run bit for bit",
                main_process_only=True,
            )
        if self.streaming:
            positions = state.get("data_positions")
            if not positions or len(positions) != self.accelerator.num_processes:
                raise ValueError(
                    f"{path} holds no stream positions for {self.accelerator.num_processes} process(es) (it was "
                    "written by a run that did not stream, or by another number of processes): resume it as it ran"
                )
            self.data_position = dict(positions[self.accelerator.process_index])
        if self.extra_state is not None and state.get("extra") is not None:
            self.extra_state.load_state_dict(state["extra"])
        return path

    # ----- validation and the end -----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, filename: str | None = None) -> str | None:
        """Sample a grid with the EMA weights on the main process; PNG under samples/ and to TensorBoard.

        Call it on every rank: the others wait at the closing barrier.
        """
        path = None
        with self.sampling_weights():
            if self.accelerator.is_main_process:
                was_training = {name: self.unwrap(name).training for name in self.models}
                for name in self.models:
                    self.unwrap(name).eval()
                images = self.sample_images(self)
                for name, flag in was_training.items():
                    self.unwrap(name).train(flag)
        if self.accelerator.is_main_process:
            grid = image_grid(images)
            folder = os.path.join(self.args.output_dir, "samples")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, filename or f"step_{self.global_step:06d}.png")
            save_image(grid, path)
            if self.args.report_to == "tensorboard":
                import numpy as np

                writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
                writer.add_image("validation", np.asarray(grid.convert("RGB")), self.global_step, dataformats="HWC")
        self.accelerator.wait_for_everyone()
        return path

    def evaluate(self) -> dict | None:
        """FID/KID/precision/recall of `--eval_num_samples` EMA samples against the reference (main process)."""
        from custom_pipelines.evaluation import build_feature_extractor, evaluate_pipeline, reference_features

        args, metrics = self.args, None
        with self.sampling_weights():
            if self.accelerator.is_main_process:
                pipe = self.build_pipeline(self)
                pipe.set_progress_bar_config(disable=True)
                if self._eval_reference is None:  # the extractor and real features are computed once per run
                    probe = self.sample_images(self)
                    extractor = build_feature_extractor(
                        args.eval_feature_extractor, probe.shape[-1], args.eval_inception_weights, device=self.device
                    )
                    reference = args.eval_reference or (
                        "digits" if args.dataset_name == "digits" else args.train_data_dir
                    )
                    if reference is None:
                        raise ValueError(
                            "--eval_fid_every needs --eval_reference for this dataset ('digits' or a folder)"
                        )
                    self._eval_reference = (extractor, reference_features(reference, extractor, probe.shape[-1]))
                extractor, real = self._eval_reference
                result = evaluate_pipeline(
                    pipe, args.eval_num_samples, real, extractor, seed=args.seed, **self.eval_pipeline_kwargs
                )
        if self.accelerator.is_main_process:
            metrics = {f"eval/{k}": result[k] for k in ("fid", "kid_mean", "precision", "recall") if k in result}
            self.accelerator.log(metrics, step=self.global_step)
            append_metrics(args.output_dir, self.global_step, metrics)
            logger.info(f"step {self.global_step}: {metrics}", main_process_only=True)
        self.accelerator.wait_for_everyone()
        return metrics

    def _parameter_checksums(self) -> dict[str, list[float]]:
        """Σ|θ| per model on every rank: after DDP training all ranks must hold the same weights (under FSDP each
        rank sums its shards and every rank reports the total of the whole model)."""
        sums = {}
        for name in self.models:
            shards = [fsdp.local_tensor(p).detach().double().abs().sum() for p in self.models[name].parameters()]
            local = torch.stack(shards).sum().reshape(1).to(self.device)
            if fsdp.is_sharded(self.accelerator):
                local = self.accelerator.reduce(local, reduction="sum")
            sums[name] = self.accelerator.gather(local).cpu().tolist()
        return sums

    def _finish(self) -> None:
        args, acc = self.args, self.accelerator
        acc.wait_for_everyone()
        self.check_weights_finite("the final pipeline")
        checksums, shards = self._parameter_checksums(), fsdp.shard_numels(acc, self.models)
        hosts = gather_object([socket.gethostname()]) if acc.num_processes > 1 else [socket.gethostname()]
        bad = [self.data_position.get("bad_samples", 0)] if self.streaming else []
        timing = [{"seconds_per_step": self.step_timer.seconds_per_step(), "peak_rss_mib": round(peak_rss_mib(), 1)}]
        timing = gather_object(timing) if acc.num_processes > 1 else timing
        bad = gather_object(bad) if acc.num_processes > 1 and self.streaming else bad
        if self.global_step % args.validation_steps != 0:
            self.validate()  # every rank calls it: it ends in a barrier
        with self.sampling_weights():  # every rank: under FSDP it gathers the full weights
            if acc.is_main_process:
                for name in self.models:
                    self.unwrap(name).eval()
                try:
                    self.save_pipeline(self, args.output_dir)
                except OSError as err:  # a full disk, a folder gone read-only: say what is safe
                    raise OSError(
                        f"the final pipeline could not be written to {args.output_dir} ({err}); the checkpoints in "
                        "it are intact: free space and rerun with --resume_from_checkpoint latest"
                    ) from err
        if acc.is_main_process:
            summary = {
                "global_step": self.global_step,
                "world_size": acc.num_processes,
                "hostnames": hosts,  # per rank: the machines the run spanned
                "distributed_type": acc.distributed_type.value,  # FSDP, MULTI_CPU (DDP), MULTI_GPU, NO, ...
                "param_shard_numel": shards,  # parameter elements each rank holds, per model
                "mixed_precision": acc.mixed_precision,
                "mixed_precision_requested": args.mixed_precision,
                "mixed_precision_reason": getattr(getattr(args, "precision", None), "reason", None),
                "attention_backend": self.attention_backend,
                "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)),
                "param_checksums": checksums,
                "per_rank": timing,  # seconds per update from the rank's first one on, and its peak RSS so far
            }
            if self.streaming:
                summary["bad_samples"] = bad  # per rank: streamed examples skipped as undecodable
            write_json(os.path.join(args.output_dir, SUMMARY_FILE), summary)
            curve = plot_loss_curve(args.output_dir)
            self.write_card(args.output_dir, self.card, args)
            logger.info(f"saved pipeline to {args.output_dir}; loss curve {curve}", main_process_only=True)
        push_error = self._push() if args.push_to_hub and acc.is_main_process else None
        acc.wait_for_everyone()
        if acc.num_processes > 1:
            # let gloo's worker thread finish its last collective before DDP is torn down, or the process can hang
            # at exit (docs/performance.md, "Multi-process CPU runs")
            time.sleep(1.0)
        acc.end_training()
        if push_error is not None:  # after the other ranks are released: the run itself is complete and saved
            raise push_error

    def _push(self) -> CommandFailed | None:
        """Push the saved pipeline; a failure is returned (raised once every rank is done), with how to push the
        saved folder later."""
        args = self.args
        try:
            url = self.push_folder(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private)
        except Exception as err:  # the network, the token, the hub: the trained pipeline is saved either way
            return CommandFailed(
                f"the push to {args.hub_model_id} failed ({type(err).__name__}: {err}); the trained pipeline is saved "
                f"in {args.output_dir}: push it later with `python -m custom_pipelines.hub.push {args.output_dir} "
                f"{args.hub_model_id}`"
            )
        logger.info(f"pushed {args.output_dir} to {args.hub_model_id}: {url}", main_process_only=True)
        return None


def enable_gradient_checkpointing(models: dict[str, torch.nn.Module]) -> None:
    """`--gradient_checkpointing` on every trained model (diffusers' `enable_gradient_checkpointing`: each block's
    activations are recomputed in the backward pass), or a ValueError naming the model that cannot."""
    for name, model in models.items():
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise ValueError(
                f"--gradient_checkpointing: the {name!r} model ({type(model).__name__}) does not support it; "
                "supported: UNet2DModel, UNet2DConditionModel, AutoencoderKL, ClassConcatUNet2DModel"
            )
        model.enable_gradient_checkpointing()


def _check_names(models: dict, optimizers: dict, frozen: dict, step_every: dict) -> None:
    unknown = set(optimizers) - set(models)
    if unknown:
        raise ValueError(f"optimizers {sorted(unknown)} have no model of the same name in {sorted(models)}")
    both = set(frozen) & set(models)
    if both:
        raise ValueError(f"frozen_models {sorted(both)} are also trained models: a network is one or the other")
    for name, every in step_every.items():
        if name not in optimizers:
            raise ValueError(f"optimizer_step_every names {name!r}, which is not an optimizer {sorted(optimizers)}")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"optimizer_step_every[{name!r}] must be a positive integer, got {every!r}")


def _updates_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer updates per epoch from the batches of one process (the prepared, sharded dataloader)."""
    return max(1, math.ceil(num_batches / gradient_accumulation_steps))


def _freeze(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def _scalar_config(args) -> dict:
    """TensorBoard's hparams take scalars only."""
    out = {}
    for key, value in vars(args).items():
        if key == "hub_token":
            continue
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
