"""Our DDPM training step and sampling next to stock diffusers, side by side in one process.

Same UNet config (hub_configs/ddpm-digits-16), same initial weights, same digits batch. Variants run in
interleaved rounds so load on the machine hits all of them alike; the median per round is reported, and
ratios are against the stock variant of the same round.

    python benchmarks/bench_ddpm.py                # prints a markdown table
    python benchmarks/bench_ddpm.py --rounds 5 --train_steps 10 --sample_steps 10

The bf16 rows run only where the CPU runs bf16 natively (`custom_pipelines.precision`); elsewhere a bf16 step is
hundreds of times slower than fp32 and would never finish (`--force_bf16` runs them anyway). The "defaults" rows
are what the trainer and `enable_fast_sampling` pick on this machine with `auto`.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from torch._inductor import config as inductor_config

from custom_pipelines import (
    DDIMEtaScheduler,
    DDPMAncestralScheduler,
    UnconditionalDiffusionPipeline,
    enable_fast_sampling,
)
from custom_pipelines.data import ImageTransform, load_image_dataset
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models import set_attention_backend
from custom_pipelines.precision import cpu_capability, resolve_mixed_precision
from custom_pipelines.training.compile_check import install_compile_check

FUSED, FOREACH = {"fused": True}, {"foreach": True}  # on CPU, foreach AdamW loops over the tensors one by one


def digits_batch(batch_size: int, resolution: int) -> torch.Tensor:
    dataset = load_image_dataset("digits", resolution=resolution)
    transform = ImageTransform(resolution, channels=1)
    return torch.stack([transform(dataset[i]["image"]) for i in range(batch_size)])


def stock_train_step(unet, optimizer, scheduler, clean):
    """diffusers' examples/unconditional_image_generation/train_unconditional.py, fp32."""
    noise = torch.randn_like(clean)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    loss = F.mse_loss(unet(noisy, timesteps).sample, noise)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()


def our_train_step(unet, optimizer, scheduler, clean, autocast_dtype):
    """training/train_ddpm.py's step as the trainer core runs it (`--mixed_precision bf16` = autocast on the batch's
    device)."""
    noise = torch.randn_like(clean)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    with torch.autocast(clean.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        model_output = unet(noisy, timesteps).sample
    loss = scheduler.training_losses(model_output.float(), clean, noise, timesteps)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device="cpu") -> float:
    """Achieved GFLOP/s of an n×n @ n×n matmul: the machine's practical peak for this dtype."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / time_it(lambda: a @ b, repeats) / 1e9


def unet_forward_gflop(unet, sample: torch.Tensor) -> float:
    """GFLOP of one UNet forward (convs, matmuls, attention) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, torch.full((sample.shape[0],), 500))
    return counter.get_total_flops() / 1e9


def time_it(fn, repeats: int) -> float:
    """Seconds per call of `fn` (after one warm-up call: allocator, oneDNN primitive cache, cuDNN autotuning); on a
    GPU, the queued kernels are waited for before the clock is read."""
    fn()
    _synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize()
    return (time.perf_counter() - start) / repeats


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main(argv=None):
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        # emulating the AVX2 kind: inductor's own generated kernels must not use AVX-512 either
        inductor_config.cpp.simdlen = 256
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="ddpm-digits-16")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=8, help="timed training steps per variant per round")
    parser.add_argument("--sample_steps", type=int, default=10, help="denoising steps per timed sampling call")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (~1-2 min compile each)")
    parser.add_argument("--force_bf16", action="store_true", help="run the bf16 rows on a CPU without native bf16")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    unet_config = load_component_config(args.config, "unet")
    sched_config = load_component_config(args.config, "scheduler", "scheduler_config.json")
    torch.manual_seed(0)
    base = UNet2DModel.from_config(unet_config)
    clean = digits_batch(args.batch_size, unet_config["sample_size"])
    stock_sched, our_sched = DDPMScheduler.from_config(sched_config), DDPMAncestralScheduler.from_config(sched_config)

    choice = resolve_mixed_precision("auto", "cpu")
    native_bf16 = choice.mixed_precision == "bf16"
    run_bf16 = native_bf16 or args.force_bf16
    print(f"CPU: {cpu_capability()}; auto precision: {choice.mixed_precision} ({choice.reason})")
    auto_dtype = torch.bfloat16 if native_bf16 else None
    auto_attention = "math" if native_bf16 else "sdpa"
    train_variants = {}
    bf16_step = lambda u, o: our_train_step(u, o, our_sched, clean, torch.bfloat16)  # noqa: E731
    stock_name = "stock diffusers loop (fp32)"
    rows = [
        (stock_name, lambda u, o: stock_train_step(u, o, stock_sched, clean), "sdpa", {}),
        (
            f"ours, defaults (auto: {choice.mixed_precision}, {auto_attention} attention, fused AdamW)",
            lambda u, o: our_train_step(u, o, our_sched, clean, auto_dtype),
            auto_attention,
            FUSED,
        ),
        ("ours fp32, matmul attention", lambda u, o: our_train_step(u, o, our_sched, clean, None), "math", FUSED),
    ]
    if run_bf16:
        rows += [
            ("ours bf16 autocast, SDPA attention, foreach AdamW", bf16_step, "sdpa", FOREACH),
            ("ours bf16 autocast, matmul attention, foreach AdamW", bf16_step, "math", FOREACH),
            ("ours bf16 autocast, matmul attention, fused AdamW", bf16_step, "math", FUSED),
        ]
    for name, step, attention, adamw in rows:
        unet = copy.deepcopy(base).train()
        set_attention_backend(unet, attention)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, **adamw)
        train_variants[name] = lambda step=step, unet=unet, opt=opt: step(unet, opt)
    if args.compile:  # what `accelerate launch --dynamo_backend inductor ...` runs with the auto precision
        unet = copy.deepcopy(base).train()
        set_attention_backend(unet, auto_attention)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, **FUSED)
        compiled = torch.compile(unet)
        install_compile_check(compiled, "unet", low_precision=native_bf16)  # as the trainer does
        # the fallback limits inductor's fusion for the whole process; keep it to this model (sampling compiles later)
        with inductor_config.patch(max_fusion_size=inductor_config.max_fusion_size):
            start = time.perf_counter()
            our_train_step(compiled, opt, our_sched, clean, auto_dtype)
            limited = inductor_config.max_fusion_size == 1
            print(f"torch.compile of the training UNet, with the compile check: {time.perf_counter() - start:.0f} s")
        name = f"ours, defaults ({choice.mixed_precision}) + torch.compile" + (
            " (recompiled by the compile check with max_fusion_size=1)" if limited else ""
        )
        train_variants[name] = lambda: our_train_step(compiled, opt, our_sched, clean, auto_dtype)

    def pipe_call(pipe, **kw):
        pipe.set_progress_bar_config(disable=True)
        return lambda: pipe(
            batch_size=args.batch_size, num_inference_steps=args.sample_steps, output_type="np",
            generator=torch.Generator().manual_seed(0), **kw,
        )  # fmt: skip

    eval_unet = copy.deepcopy(base).eval()
    bf16_unet = copy.deepcopy(base).eval().to(torch.bfloat16)
    bf16_math_unet = copy.deepcopy(bf16_unet)
    set_attention_backend(bf16_math_unet, "math")
    auto_pipe = UnconditionalDiffusionPipeline(
        unet=copy.deepcopy(base).eval(), scheduler=DDPMAncestralScheduler.from_config(sched_config)
    )
    enable_fast_sampling(auto_pipe)  # torch_dtype="auto"
    sample_variants = {
        "stock DDPMPipeline (fp32)": pipe_call(DDPMPipeline(unet=eval_unet, scheduler=stock_sched)),
        "stock DDIMPipeline (fp32)": pipe_call(
            DDIMPipeline(unet=eval_unet, scheduler=DDIMScheduler.from_config(sched_config)), eta=0.0
        ),
        "ours, DDPMAncestral fp32": pipe_call(UnconditionalDiffusionPipeline(unet=eval_unet, scheduler=our_sched)),
        f"ours, enable_fast_sampling(pipe) defaults (auto: {auto_pipe.unet.dtype})": pipe_call(auto_pipe),
    }
    bf16_sample_variants = {
        "ours, DDPMAncestral, UNet bf16 (torch_dtype=bfloat16)": pipe_call(
            UnconditionalDiffusionPipeline(unet=bf16_unet, scheduler=DDPMAncestralScheduler.from_config(sched_config))
        ),
        "ours, DDIMEta, UNet bf16": pipe_call(
            UnconditionalDiffusionPipeline(unet=bf16_unet, scheduler=DDIMEtaScheduler.from_config(sched_config))
        ),
        "ours, DDPMAncestral, UNet bf16, matmul attention": pipe_call(
            UnconditionalDiffusionPipeline(
                unet=bf16_math_unet, scheduler=DDPMAncestralScheduler.from_config(sched_config)
            )
        ),
    }
    if run_bf16:
        sample_variants.update(bf16_sample_variants)

    if args.compile:
        # the user's path: enable_fast_sampling(pipe, torch_dtype=torch.bfloat16, compile=True)
        fast = UnconditionalDiffusionPipeline(
            unet=copy.deepcopy(base).eval(), scheduler=DDPMAncestralScheduler.from_config(sched_config)
        )
        enable_fast_sampling(fast, compile=True)
        name = f"ours, DDPMAncestral, enable_fast_sampling(pipe, compile=True) (auto: {fast.unet.dtype})"
        sample_variants[name] = pipe_call(fast)
        with torch.no_grad():  # compile outside the timed rounds
            start = time.perf_counter()
            sample_variants[name]()
            print(f"torch.compile of the sampling UNet: {time.perf_counter() - start:.0f} s")

    train_times = {k: [] for k in train_variants}
    sample_times = {k: [] for k in sample_variants}
    for _ in range(args.rounds):
        for name, fn in train_variants.items():
            train_times[name].append(time_it(fn, args.train_steps))
        with torch.no_grad():
            for name, fn in sample_variants.items():
                sample_times[name].append(time_it(fn, 1) / args.sample_steps)

    print(f"\nMachine: {platform.processor() or platform.machine()}, {cpu_capability()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; UNet {args.config} "
          f"({sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params), batch {args.batch_size}\n")  # fmt: skip
    stock = statistics.median(train_times[stock_name])
    print("| training step | ms/step | img/s | × stock |\n|---|---|---|---|")
    for name, times in train_times.items():
        t = statistics.median(times)
        print(f"| {name} | {t * 1e3:.0f} | {args.batch_size / t:.0f} | {stock / t:.2f} |")
    print_training_floor(base, clean, stock, torch.bfloat16 if run_bf16 else torch.float32)
    print_efficiency(eval_unet, bf16_unet if run_bf16 else None, clean)
    stock = statistics.median(sample_times["stock DDPMPipeline (fp32)"])
    print("\n| sampling | ms per network evaluation | × stock DDPMPipeline time |\n|---|---|---|")
    for name, times in sample_times.items():
        t = statistics.median(times)
        print(f"| {name} | {t * 1e3:.1f} | {t / stock:.2f} |")


def print_training_floor(unet, clean: torch.Tensor, stock_seconds: float, dtype: torch.dtype) -> None:
    """How much of a 2× faster step the arithmetic alone would use, at the matmul peak of `dtype` in this run."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = copy.deepcopy(unet).train()
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        unet(clean, torch.full((clean.shape[0],), 500)).sample.float().square().mean().backward()
    gflop = counter.get_total_flops() / 1e9
    conv = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k)) / 1e9
    peak = matmul_peak_gflops(dtype)
    print(
        f"\nTraining step (forward + backward): {gflop:.1f} GFLOP, {conv:.1f} of it in convolutions. At this run's "
        f"{str(dtype).split('.')[-1]} "
        f"matmul peak ({peak:.0f} GFLOP/s) the arithmetic alone takes {gflop / peak * 1e3:.0f} ms; "
        f"2× the stock step is {stock_seconds / 2 * 1e3:.0f} ms."
    )


def print_efficiency(fp32_unet, bf16_unet, clean: torch.Tensor) -> None:
    """UNet forward GFLOP/s against the matmul peak of the same dtype, measured in the same run."""
    gflop = unet_forward_gflop(fp32_unet, clean)
    timesteps = torch.full((clean.shape[0],), 500)
    header = f"UNet forward, batch {clean.shape[0]} ({gflop:.2f} GFLOP)"
    print(f"\n| {header} | ms | GFLOP/s | matmul peak GFLOP/s | % of peak |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        variants = [("fp32", fp32_unet, torch.float32)]
        variants += [("bf16 weights", bf16_unet, torch.bfloat16)] if bf16_unet is not None else []
        for name, unet, dtype in variants:
            seconds = time_it(lambda unet=unet, dtype=dtype: unet(clean.to(dtype), timesteps), 5)
            peak = matmul_peak_gflops(dtype)
            achieved = gflop / seconds
            print(f"| {name} | {seconds * 1e3:.1f} | {achieved:.0f} | {peak:.0f} | {100 * achieved / peak:.0f}% |")


if __name__ == "__main__":
    main()
