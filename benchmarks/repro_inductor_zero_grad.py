"""Standalone reproducer of the PyTorch CPU inductor bug that breaks compiled UNet training here (for an upstream
report): the gradient through conv → GroupNorm → conv, + residual, ÷ 1.0 (ResnetBlock2D's output_scale_factor),
nearest ×2 → conv comes out as zero. Without the ÷ 1.0 it is compiled correctly, and so it is with
`torch._inductor.config.max_fusion_size = 1`: a fusion bug.

    python benchmarks/repro_inductor_zero_grad.py
    # torch 2.13.0+cpu: |grad| eager 823.7, compiled 0.0, relative error 1.00e+00 -> BUG
"""

import torch
import torch.nn.functional as F


def block(h, w1, w2, w3):
    y = (F.conv2d(F.group_norm(F.conv2d(h, w1, padding=1), 8), w2, padding=1) + h) / 1.0  # as ResnetBlock2D
    return F.conv2d(F.interpolate(y, scale_factor=2.0, mode="nearest"), w3, padding=1)


def main():
    torch.manual_seed(0)
    weights = [torch.randn(64, 64, 3, 3) * 0.05 for _ in range(3)]
    h = torch.randn(64, 64, 4, 4, requires_grad=True)
    upstream = torch.randn(64, 64, 8, 8)
    eager = torch.autograd.grad(block(h, *weights), h, upstream)[0]
    compiled = torch.autograd.grad(torch.compile(block)(h, *weights), h, upstream)[0]
    error = ((compiled - eager).norm() / eager.norm()).item()
    verdict = "BUG" if error > 1e-3 else "ok"
    print(f"torch {torch.__version__}: |grad| eager {eager.norm():.1f}, compiled {compiled.norm():.1f}, "
          f"relative error {error:.2e} -> {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
