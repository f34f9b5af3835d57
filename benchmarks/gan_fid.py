"""StyleGAN vs ProGAN vs DCGAN (WGAN-GP) vs DCGAN (weight-clipped WGAN) on digits 32×32, same CPU budget each.

For each run, `training/train_gan.py` trains in this process (one thread) from its `hub_configs/` variant with the
family's paper defaults, batch 32. The budget is **CPU time of the training loop** (`time.process_time`), not wall
time, so that other jobs on the machine do not change the number of steps:

1. timing probe: a short real run of 3 periods (a period = lcm(n_critic, reg_interval) steps: one generator step
   and one R1 / gradient penalty) records the CPU time between consecutive training steps; the first period
   (one-off allocations) is left out. ProGAN records it per
   stage, since its steps get dearer as it grows.
2. steps = budget / CPU seconds per step. ProGAN gets 7 phases of equal length (4² stabilize, then fade-in +
   stabilize at 8², 16², 32²): phase_steps = budget / (c₄ + 2c₈ + 2c₁₆ + 2c₃₂), max_train_steps = 7·phase_steps.
3. the real run, whose loop CPU time is recorded and reported next to the budget (probes are not counted).

Each saved pipeline (EMA generator) is then scored: digits-FID, KID, precision/recall of `--num_samples` seeded
samples against the 1797 real digits, digits-classifier features (`custom_pipelines.evaluation`); StyleGAN at ψ = 1
(and ψ = 0.7 in an extra row). Writes benchmarks/results/gan_fid.{md,json} and gan_grid_<run>.png (64 seeded
samples, ×2 nearest upscaling). `stylegan_faces` trains on the built-in `faces` (100 LFW crops, 32×32) and only
writes gan_faces_grid.png. `stylegan_mapping1` / `stylegan_no_mixing` are the ablation rows.

    OMP_NUM_THREADS=1 python benchmarks/gan_fid.py --time_budget_s 300
    OMP_NUM_THREADS=1 python benchmarks/gan_fid.py --runs stylegan_faces --time_budget_s 120
    OMP_NUM_THREADS=1 python benchmarks/gan_fid.py --skip_training   # re-score the runs under --run_dir
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from custom_pipelines.evaluation import build_feature_extractor, evaluate_pipeline, reference_features
from custom_pipelines.hub.configs import resolve_variant
from custom_pipelines.pipelines.pipeline_gan import GANPipeline
from custom_pipelines.pipelines.pipeline_stylegan import StyleGANPipeline
from custom_pipelines.training.reporting import image_grid
from training import train_gan

RESULTS_JSON = "gan_fid.json"


@dataclass(frozen=True)
class Run:
    model_config: str
    loss: str
    label: str
    flags: tuple[str, ...] = ()
    dataset: str = "digits"
    config_overrides: dict = field(default_factory=dict)  # generator config keys changed for an ablation

    @property
    def is_stylegan(self) -> bool:
        return self.model_config.startswith("stylegan")


RUNS = {
    "stylegan": Run("stylegan-digits-32", "ns_r1", "StyleGAN, NS + R1 (lazy, every 4)", ("--reg_interval", "4")),
    "progan": Run("progan-digits-32", "wgan_gp", "ProGAN, WGAN-GP, growing 4²→32²"),
    "dcgan_wgan_gp": Run("dcgan-digits-32", "wgan_gp", "DCGAN, WGAN-GP"),
    "dcgan_wgan": Run("dcgan-digits-32", "wgan", "DCGAN, WGAN (weight clipping, RMSProp)"),
    "stylegan_no_mixing": Run(
        "stylegan-digits-32", "ns_r1", "StyleGAN without mixing regularization",
        ("--reg_interval", "4", "--style_mixing_prob", "0"),
    ),
    "stylegan_mapping1": Run(
        "stylegan-digits-32", "ns_r1", "StyleGAN, 1 mapping layer instead of 4", ("--reg_interval", "4"),
        config_overrides={"n_mapping_layers": 1},
    ),
    "stylegan_faces": Run("stylegan-digits-32", "ns_r1", "StyleGAN on faces", ("--reg_interval", "4"), "faces"),
}  # fmt: skip
DEFAULT_RUNS = ("stylegan", "progan", "dcgan_wgan_gp", "dcgan_wgan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=sorted(RUNS))
    parser.add_argument("--time_budget_s", type=float, default=300.0, help="CPU seconds of training loop per run")
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--run_dir", default="runs/gan-bench")
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--skip_training", action="store_true", help="score the pipelines already in --run_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.time_budget_s <= 0:
        parser.error(f"--time_budget_s must be > 0, got {args.time_budget_s}")
    return args


# ----- training under a CPU-time budget ------------------------------------------------------------------------------
class _StepClock:
    """Process CPU time at the start of every training step of the runs made inside `timed_trainer()`."""

    def __init__(self):
        self.times: list[float] = []

    def seconds_per_step(self, steps: range | list[int]) -> float:
        """Mean CPU seconds of the given steps (each measured up to the start of the next one)."""
        deltas = [self.times[i + 1] - self.times[i] for i in steps if i + 1 < len(self.times)]
        return sum(deltas) / len(deltas)


@contextlib.contextmanager
def timed_trainer():
    """Swap the core's Trainer (which train_gan imports when it runs) for a subclass whose training_step records the
    clock, through its public arguments."""
    import custom_pipelines.training as core

    clock, original = _StepClock(), core.Trainer

    class TimedTrainer(original):
        def __init__(self, *args, training_step, **kwargs):
            def timed_step(trainer, batch):
                clock.times.append(time.process_time())
                return training_step(trainer, batch)

            super().__init__(*args, training_step=timed_step, **kwargs)

        def train(self):
            super().train()
            clock.times.append(time.process_time())  # the end of the last step (its EMA update included)

    core.Trainer = TimedTrainer
    try:
        yield clock
    finally:
        core.Trainer = original


def reset_accelerate_state() -> None:
    """Accelerate keeps process-wide singletons; every in-process run starts clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def model_config_folder(run: Run, run_dir: str) -> str:
    """The hub_configs variant, or a copy with the ablation's generator config changed."""
    if not run.config_overrides:
        return run.model_config
    folder = os.path.join(run_dir, "model_config")
    shutil.copytree(resolve_variant(run.model_config), folder, dirs_exist_ok=True)
    component = "stylegan" if run.is_stylegan else "gan_generator"
    path = os.path.join(folder, component, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(run.config_overrides)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return folder


def train(run: Run, output_dir: str, args, max_train_steps: int, phase_steps: int | None) -> _StepClock:
    flags = [
        "--model_config", model_config_folder(run, output_dir), "--dataset_name", run.dataset,
        "--output_dir", output_dir, "--loss", run.loss, "--train_batch_size", str(args.train_batch_size),
        "--max_train_steps", str(max_train_steps), "--checkpointing_steps", "1000000",
        "--validation_steps", "1000000", "--logging_steps", "10", "--report_to", "none", "--seed", str(args.seed),
        *run.flags, *(("--phase_steps", str(phase_steps)) if phase_steps else ()),
    ]  # fmt: skip
    reset_accelerate_state()
    with timed_trainer() as clock:
        train_gan.main(train_gan.parse_args(flags))
    return clock


def plan_steps(run: Run, args, probe_dir: str) -> dict:
    """Probe a few steps, then choose max_train_steps (and ProGAN's phase_steps) that fill the CPU budget."""
    if run.model_config.startswith("progan"):
        probe_phase = 5
        clock = train(run, probe_dir, args, 7 * probe_phase, probe_phase)
        stage_steps = [[] for _ in range(4)]  # 32×32: stages 4², 8², 16², 32²
        for step in range(1, 7 * probe_phase):
            stage_steps[train_gan.progan_phase(step, probe_phase, max_stage=3)[0]].append(step)
        costs = [clock.seconds_per_step(steps) for steps in stage_steps]
        phase_steps = max(1, int(args.time_budget_s / (costs[0] + 2 * sum(costs[1:]))))
        plan = {"max_train_steps": 7 * phase_steps, "phase_steps": phase_steps, "probe_s_per_step": costs}
    else:  # one period = a G step every n_critic and an R1 / GP every reg_interval D steps; the first is warm-up
        reg_interval = int(dict(zip(run.flags, run.flags[1:])).get("--reg_interval", 1))
        period = math.lcm(1 if run.loss == "ns_r1" else 5, reg_interval)
        clock = train(run, probe_dir, args, 3 * period + 1, None)
        cost = clock.seconds_per_step(range(period + 1, 3 * period + 1))
        steps = max(1, int(args.time_budget_s / cost))
        plan = {"max_train_steps": steps, "phase_steps": None, "probe_s_per_step": cost}
    shutil.rmtree(probe_dir, ignore_errors=True)
    return plan


def train_with_budget(name: str, args) -> dict:
    run, output_dir = RUNS[name], os.path.join(args.run_dir, name)
    shutil.rmtree(output_dir, ignore_errors=True)
    plan = plan_steps(run, args, output_dir + "-probe")
    wall = time.perf_counter()
    clock = train(run, output_dir, args, plan["max_train_steps"], plan["phase_steps"])
    record = {
        **plan,
        "time_budget_s": args.time_budget_s,
        "train_loop_cpu_s": clock.times[-1] - clock.times[0],
        "run_wall_s": time.perf_counter() - wall,
        "train_batch_size": args.train_batch_size,
    }
    with open(os.path.join(output_dir, "bench_train.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return record


# ----- scoring and pictures ------------------------------------------------------------------------------------------
def load_pipeline(name: str, args):
    folder = os.path.join(args.run_dir, name)
    pipe = (StyleGANPipeline if RUNS[name].is_stylegan else GANPipeline).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_grid(pipe, path: str, args, **kwargs) -> None:
    images = pipe(batch_size=64, generator=torch.Generator().manual_seed(args.seed), output_type="pt", **kwargs).images
    grid = image_grid(images, nrow=8)
    grid.resize((grid.width * 2, grid.height * 2), resample=0).save(path)


def score(name: str, args, reference) -> list[dict]:
    pipe, run = load_pipeline(name, args), RUNS[name]
    psis = (1.0, 0.7) if run.is_stylegan else (None,)
    rows = []
    for psi in psis:
        kwargs = {} if psi is None else {"truncation_psi": psi}
        if reference is not None:
            extractor, real = reference
            metrics = evaluate_pipeline(
                pipe, args.num_samples, real, extractor, batch_size=250, seed=args.seed, **kwargs
            )
            rows.append({"truncation_psi": psi, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    grid_name = "gan_faces_grid.png" if run.dataset == "faces" else f"gan_grid_{name}.png"
    save_grid(pipe, os.path.join(args.results_dir, grid_name), args, **({"truncation_psi": 1.0} if psis[0] else {}))
    return rows


def read_results(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_markdown(results: dict, path: str) -> None:
    lines = [
        "Digits 32×32 (the 1797 scikit-learn digits, upscaled), one CPU thread, batch 32, the same CPU-time budget "
        "for each training loop (see `benchmarks/gan_fid.py`). Metrics: 1000 seeded samples of the EMA generator vs "
        "the 1797 real digits, features of the digits classifier (`custom_pipelines.evaluation`); FID and KID lower "
        "is better, precision/recall (k = 3) higher is better. 1000 samples bias FID upwards: compare rows only.",
        "",
        "| run | loss | steps | CPU s (budget) | ψ | digits-FID | KID | precision | recall | digits IS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        run, train_info = RUNS[name], result["train"]
        for row in result["metrics"]:
            psi = "" if row["truncation_psi"] is None else f"{row['truncation_psi']:g}"
            lines.append(
                f"| {run.label} | {run.loss} | {train_info['max_train_steps']} | "
                f"{train_info['train_loop_cpu_s']:.0f} ({train_info['time_budget_s']:.0f}) | {psi} | "
                f"{row['fid']:.2f} | {row['kid_mean']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                f"{row.get('inception_score_mean', float('nan')):.2f} |"
            )
    for name, result in results.items():
        if not result["metrics"]:  # faces: no reference features, only the grid
            info = result["train"]
            lines += [
                "",
                f"{RUNS[name].label}: {info['max_train_steps']} steps, {info['train_loop_cpu_s']:.0f} CPU s "
                f"(budget {info['time_budget_s']:.0f}), grid `gan_faces_grid.png`, no metric.",
            ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, RESULTS_JSON)
    results = read_results(json_path)
    extractor = build_feature_extractor("digits", resolution=32)
    reference = (extractor, reference_features("digits", extractor, resolution=32))
    for name in args.runs:
        if args.skip_training:
            with open(os.path.join(args.run_dir, name, "bench_train.json"), encoding="utf-8") as f:
                train_info = json.load(f)
        else:
            train_info = train_with_budget(name, args)
        metrics = score(name, args, reference if RUNS[name].dataset == "digits" else None)
        print(name, json.dumps(train_info), json.dumps(metrics))
        results[name] = {"train": train_info, "metrics": metrics}
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    write_markdown(results, os.path.join(args.results_dir, "gan_fid.md"))
    return results


if __name__ == "__main__":
    main(parse_args())
