"""Few-step students distilled from our diffusion pipelines (consistency distillation, Song et al. 2023; latent
consistency models with a guidance embedding, Luo et al. 2023).

- `consistency`: the skipping grid, the boundary-condition parameterisation f(x, t) = c_skip(t) x + c_out(t) x̂_0
  (exactly diffusers' `LCMScheduler`'s, so a student samples with it) and the losses.
- `solvers`: the teacher's ODE step over the skipping grid (DDIM, DPM-Solver++(2S)).
- `guidance_embedding`: the w-embedding that makes a guided student step ONE forward pass, and the pixel
  class-conditional UNet that carries it (`GuidanceEmbeddedUNet2DModel`).
- `teacher`: reading a saved pipeline as a frozen teacher and building its student and the student's scheduler.

`training/train_distill.py` is the training script; docs/distillation.md the user's guide.
"""

from custom_pipelines.lazy import lazy_exports

_PUBLIC = {
    "GuidanceEmbeddedUNet2DModel": ".guidance_embedding",
    "boundary_scalings": ".consistency",
    "consistency_function": ".consistency",
    "consistency_loss": ".consistency",
    "guidance_scale_embedding": ".guidance_embedding",
    "load_teacher": ".teacher",
    "skipping_grid": ".consistency",
    "teacher_ode_step": ".solvers",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
