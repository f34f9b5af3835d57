"""Time to quality: our DDPM recipe against the stock diffusers loop for the same wall-clock budget.

Every recipe trains the same UNet config on the same digits for `--budget_s` seconds of its own compute. Steps of
all recipes are interleaved (the one with the least time so far steps next), so load on the machine hits all of
them alike. EMA weights are snapshotted at fixed fractions of the budget and scored afterwards with digits-FID
(DDIM-50, `--num_samples` samples, same seeds for every snapshot). Reported: final FID of each recipe and the
training time each needed to reach the stock run's final FID.

    python benchmarks/time_to_quality.py                       # stock vs ours (the make demo recipe)
    python benchmarks/time_to_quality.py --recipes stock ours ours_minsnr ours_v ours_bs32 --budget_s 300

The stock step is diffusers' examples/unconditional_image_generation/train_unconditional.py: DDPMScheduler,
ε-MSE, AdamW (lr 1e-4, weight decay 1e-6, cosine with 500 warm-up steps), EMA (power 3/4), fp32. Ours is
training/train_ddpm.py's step as the trainer core runs it: DDPMAncestralScheduler.training_losses, precision and
attention chosen by `auto`, fused AdamW, gradient clipping, EMA; the recipe flags are those of `make demo`.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from custom_pipelines import DDPMAncestralScheduler, UnconditionalDiffusionPipeline, evaluate_pipeline
from custom_pipelines.data import ImageTransform, load_image_dataset
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.io import write_json
from custom_pipelines.models.attention import set_attention_backend
from custom_pipelines.precision import cpu_capability, resolve_mixed_precision


@dataclass(frozen=True)
class Recipe:
    stock: bool = False
    learning_rate: float = 1e-3
    batch_size: int = 64
    lr_warmup_steps: int = 100
    ema_power: float = 0.75
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None
    unet_overrides: dict = field(default_factory=dict)
    mixed_precision: str = "auto"


OURS = Recipe(batch_size=32, snr_gamma=5.0)  # make demo: lr 1e-3 cosine, 100 warm-up steps, EMA power 0.75
RECIPES = {
    "stock": Recipe(stock=True, learning_rate=1e-4, lr_warmup_steps=500, mixed_precision="no"),
    "ours": OURS,
    "ours_bs64": replace(OURS, batch_size=64),
    "ours_no_minsnr": replace(OURS, snr_gamma=None),
    "ours_bs64_no_minsnr": replace(OURS, batch_size=64, snr_gamma=None),  # the make demo recipe before
    "ours_v": replace(OURS, prediction_type="v_prediction"),
    "ours_lr2e-3": replace(OURS, learning_rate=2e-3),
    "ours_bs16": replace(OURS, batch_size=16),
    "ours_narrow": replace(OURS, unet_overrides={"block_out_channels": [32, 48, 64]}),
}


def digits_tensor(resolution: int) -> torch.Tensor:
    dataset = load_image_dataset("digits", resolution=resolution)
    transform = ImageTransform(resolution, channels=1)
    return torch.stack([transform(dataset[i]["image"]) for i in range(len(dataset))])


class Run:
    """One recipe's model, optimizer, EMA and data order; `step()` trains one batch and returns its seconds."""

    def __init__(self, name: str, recipe: Recipe, config: str, data: torch.Tensor, seed: int, est_steps: int):
        self.name, self.recipe, self.data = name, recipe, data
        unet_config = {**load_component_config(config, "unet"), **recipe.unet_overrides}
        sched_config = load_component_config(config, "scheduler", "scheduler_config.json")
        torch.manual_seed(seed)
        self.unet = UNet2DModel.from_config(unet_config).train()
        self.generator = torch.Generator().manual_seed(seed)
        if recipe.stock:
            self.scheduler = DDPMScheduler.from_config(sched_config)
            self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=recipe.learning_rate, weight_decay=1e-6)
            self.autocast = None
        else:
            self.scheduler = DDPMAncestralScheduler.from_config(sched_config, prediction_type=recipe.prediction_type)
            choice = resolve_mixed_precision(recipe.mixed_precision, "cpu")
            self.autocast = choice.torch_dtype if choice.mixed_precision != "no" else None
            set_attention_backend(self.unet, "auto", dtype=choice.torch_dtype)
            self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=recipe.learning_rate, fused=True)
        self.lr_scheduler = get_scheduler(
            "cosine", self.optimizer, num_warmup_steps=recipe.lr_warmup_steps, num_training_steps=est_steps
        )
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, use_ema_warmup=True, power=recipe.ema_power)
        self.elapsed, self.steps, self.snapshots = 0.0, 0, []
        self._order, self._cursor = torch.empty(0, dtype=torch.long), 0

    def _batch(self) -> torch.Tensor:
        size = self.recipe.batch_size
        if self._cursor + size > len(self._order):
            self._order, self._cursor = torch.randperm(len(self.data), generator=self.generator), 0
        index = self._order[self._cursor : self._cursor + size]
        self._cursor += size
        return self.data[index]

    def step(self) -> float:
        clean = self._batch()
        start = time.perf_counter()
        noise = torch.randn(clean.shape, generator=self.generator)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (clean.shape[0],))
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        if self.recipe.stock:  # train_unconditional.py: plain ε-MSE in fp32
            loss = F.mse_loss(self.unet(noisy, timesteps).sample, noise)
        else:
            with torch.autocast("cpu", dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
                output = self.unet(noisy, timesteps).sample
            loss = self.scheduler.training_losses(
                output.float(), clean, noise, timesteps, snr_gamma=self.recipe.snr_gamma
            )["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        self.steps += 1
        return seconds

    def snapshot(self) -> None:
        weights = [p.detach().clone() for p in self.ema.shadow_params]
        self.snapshots.append({"seconds": self.elapsed, "steps": self.steps, "weights": weights})

    def pipeline(self, weights) -> UnconditionalDiffusionPipeline:
        unet = copy.deepcopy(self.unet).eval()
        for p, w in zip(unet.parameters(), weights):
            p.data.copy_(w)
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        return UnconditionalDiffusionPipeline(unet=unet, scheduler=scheduler)


def estimate_step_seconds(name, recipe, config, data, seed) -> float:
    run = Run(name, recipe, config, data, seed, est_steps=1000)
    run.step()
    return min(run.step() for _ in range(4))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", default=["stock", "ours"], choices=sorted(RECIPES))
    parser.add_argument("--budget_s", type=float, default=240.0, help="training seconds per recipe")
    parser.add_argument("--snapshots", type=int, default=6, help="EMA snapshots per run, evenly spaced in time")
    parser.add_argument("--num_samples", type=int, default=512, help="samples per digits-FID (DDIM-50)")
    parser.add_argument("--config", default="ddpm-digits-16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/time_to_quality.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "stock" not in args.recipes:
        args.recipes = ["stock", *args.recipes]
    machine = f"{platform.processor() or platform.machine()}, {cpu_capability()}, {torch.get_num_threads()} threads"
    print(f"Machine: {machine}; torch {torch.__version__}; budget {args.budget_s:.0f} s per recipe")
    resolution = load_component_config(args.config, "unet")["sample_size"]
    data = digits_tensor(resolution)

    runs = []
    for name in args.recipes:  # size each cosine schedule to the steps its budget will hold
        recipe = RECIPES[name]
        est = max(1, int(args.budget_s / estimate_step_seconds(name, recipe, args.config, data, args.seed)))
        runs.append(Run(name, recipe, args.config, data, args.seed, est_steps=est))
        print(f"{name}: ≈ {est} steps in the budget")
    marks = [args.budget_s * (k + 1) / args.snapshots for k in range(args.snapshots)]
    while any(r.elapsed < args.budget_s for r in runs):
        run = min((r for r in runs if r.elapsed < args.budget_s), key=lambda r: r.elapsed)
        run.step()
        while len(run.snapshots) < len(marks) and run.elapsed >= marks[len(run.snapshots)]:
            run.snapshot()

    results = {"machine": machine, "torch": torch.__version__, "budget_s": args.budget_s, "runs": {}}
    for run in runs:
        rows = []
        for snap in run.snapshots:
            pipe = run.pipeline(snap["weights"])
            pipe.set_progress_bar_config(disable=True)
            metrics = evaluate_pipeline(
                pipe, args.num_samples, reference="digits", extractor="digits", seed=1234, num_inference_steps=50
            )
            rows.append({"seconds": round(snap["seconds"], 1), "steps": snap["steps"], "fid": metrics["fid"]})
            print(f"{run.name}: {snap['steps']} steps, {snap['seconds']:.0f} s → digits-FID {metrics['fid']:.3f}")
        results["runs"][run.name] = {"recipe": {**vars(run.recipe)}, "snapshots": rows}
    target = results["runs"]["stock"]["snapshots"][-1]["fid"]
    print(f"\n{machine}\n")
    print(f"| recipe | steps | ms/step | final digits-FID | s to stock's final FID ({target:.3f}) | × stock |")
    print("|---|---|---|---|---|---|")
    stock_time = None
    for name, entry in results["runs"].items():
        snaps = entry["snapshots"]
        reach = next((s["seconds"] for s in snaps if s["fid"] <= target), math.inf)
        stock_time = reach if name == "stock" else stock_time
        entry["seconds_to_stock_fid"] = reach
        ms = 1e3 * snaps[-1]["seconds"] / max(1, snaps[-1]["steps"])
        ratio = reach / stock_time if stock_time and math.isfinite(reach) else math.inf
        print(f"| {name} | {snaps[-1]['steps']} | {ms:.0f} | {snaps[-1]['fid']:.3f} | {reach:.0f} | {ratio:.2f} |")
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
