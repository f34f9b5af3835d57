"""The values every option of the package accepts, defined once and importable without torch.

Command lines build their parsers from these tuples, so `--help` and argument errors answer before torch, diffusers
or accelerate are imported; the modules that implement an option import its tuple from here.
"""

from __future__ import annotations

from typing import Literal, get_args

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES = get_args(PredictionType)
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "cosine", "sigmoid"]
BETA_SCHEDULES = get_args(BetaSchedule)
DDPMLossType = Literal["simple", "hybrid"]
LOSS_TYPES = get_args(DDPMLossType)
AttentionBackend = Literal["auto", "sdpa", "math"]
ATTENTION_BACKENDS = get_args(AttentionBackend)
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
MIXED_PRECISION_CHOICES = get_args(MixedPrecision)
ConditioningMethod = Literal["embedding", "concat"]  # how a class enters the UNet (models/class_conditioning.py)
CONDITIONING_METHODS = get_args(ConditioningMethod)
SAMPLING_DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")  # the `--torch_dtype` of the sampling command lines
SCHEDULER_NAMES = ("ddpm", "ddim", "dpmsolver")  # our samplers by short name (`scheduler_from_name`)
