"""The guidance embedding of a guided student (LCM, Luo et al. 2023, §4.2; Meng et al. 2023, "On distillation of
guided diffusion models", §3.1): the guidance scale w enters the network like the timestep does, so the student
predicts the classifier-free-guided output for any w in ONE forward pass instead of CFG's two.

Convention (diffusers' `LatentConsistencyModelPipeline`): the embedded value is w − 1, with w in diffusers' CFG
convention ε̃ = ε_u + w (ε_c − ε_u) (w = 1: the conditional model). A model carries the embedding when its config
has `time_cond_proj_dim`: diffusers' `UNet2DConditionModel(time_cond_proj_dim=D)` (text), and for pixel class models
our `GuidanceEmbeddedUNet2DModel` below; both take it as `timestep_cond`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

from custom_pipelines.models.unet_class_concat import _UNET_KEYS


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal features of 1000·w (VDM's, Kingma et al. 2021, as LCM uses): `[B]` → `[B, embedding_dim]`.

    Pass w − 1 (see the module docstring); `guided_model_kwargs` does."""
    if embedding_dim < 2 or embedding_dim % 2:
        raise ValueError(f"embedding_dim must be an even int >= 2, got {embedding_dim}")
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1) * 1000.0
    half = embedding_dim // 2
    frequencies = torch.exp(
        torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1))
    )
    angles = w[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype)


def has_guidance_embedding(unet) -> bool:
    """Whether `unet` predicts the guided output itself from a w-embedding (`timestep_cond`)."""
    config = getattr(unet, "config", None)
    return bool(config is not None and config.get("time_cond_proj_dim"))


def guided_model_kwargs(unet, guidance_scale: float | torch.Tensor, batch_size: int, device, dtype) -> dict:
    """`{"timestep_cond": embedding of w − 1}` for a guidance-embedded `unet`, one row per sample."""
    w = torch.as_tensor(guidance_scale, dtype=torch.float32, device=device).reshape(-1)
    w = w.expand(batch_size) if w.numel() == 1 else w
    return {"timestep_cond": guidance_scale_embedding(w - 1.0, unet.config.time_cond_proj_dim).to(device, dtype)}


class GuidanceEmbeddedUNet2DModel(ModelMixin, ConfigMixin):
    r"""A class-conditional `UNet2DModel` (class embedding added to the timestep embedding, as diffusers'
    `num_class_embeds`) that also embeds the guidance scale: emb = MLP(t) + E[y] + MLP_w(γ(w − 1)).

    A guided consistency student of a `ClassConditionalDiffusionPipeline` teacher: the teacher's weights load into it
    unchanged (`from_class_conditional`), and the w branch starts at zero, so the student starts as the teacher.

    Args:
        num_class_embeds (`int`): K + 1 (id K is the null class, as in the teacher).
        time_cond_proj_dim (`int`, defaults to 256): D, the sinusoidal features of w (even, ≥ 2).
        sample_size, in_channels, out_channels, ...: see [`UNet2DModel`].
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_class_embeds: int = 11,
        time_cond_proj_dim: int = 256,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        if not isinstance(num_class_embeds, int) or num_class_embeds < 2:
            raise ValueError(
                f"num_class_embeds must be an int >= 2 (K classes + the null class), got {num_class_embeds}"
            )
        if not isinstance(time_cond_proj_dim, int) or time_cond_proj_dim < 2 or time_cond_proj_dim % 2:
            raise ValueError(f"time_cond_proj_dim must be an even int >= 2, got {time_cond_proj_dim}")
        # the inner UNet adds whatever it is given as `class_labels` to its timestep embedding ("identity")
        self.unet = UNet2DModel(**{name: self.config[name] for name in _UNET_KEYS}, class_embed_type="identity")
        embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.class_embedding = nn.Embedding(num_class_embeds, embed_dim)
        self.guidance_embedding = nn.Sequential(
            nn.Linear(time_cond_proj_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        nn.init.zeros_(self.guidance_embedding[2].weight)  # w starts without effect: the student starts as the teacher
        nn.init.zeros_(self.guidance_embedding[2].bias)

    @classmethod
    def from_class_conditional(cls, teacher_unet: UNet2DModel, time_cond_proj_dim: int = 256):
        """The student of a class-embedding `UNet2DModel` teacher, holding its weights (w branch at zero)."""
        config = {key: teacher_unet.config[key] for key in _UNET_KEYS if key in teacher_unet.config}
        student = cls(num_class_embeds=teacher_unet.config.num_class_embeds, time_cond_proj_dim=time_cond_proj_dim,
                      **config)  # fmt: skip
        state = {f"unet.{k}": v for k, v in teacher_unet.state_dict().items() if not k.startswith("class_embedding.")}
        state["class_embedding.weight"] = teacher_unet.class_embedding.weight.detach().clone()
        missing, unexpected = student.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("guidance_embedding.") for k in missing), (missing, unexpected)
        return student.to(teacher_unet.dtype)

    @property
    def null_class_id(self) -> int:
        return self.config.num_class_embeds - 1

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        r"""The guided prediction (ε, x₀ or v) for x_t of class y at guidance scale w.

        Args:
            sample (`torch.Tensor`): x_t, `[B, in_channels, H, W]`.
            timestep (`torch.Tensor`, `float` or `int`): t, one for all or `[B]`.
            class_labels (`torch.Tensor`): `[B]` (or one) integer ids in [0, K]; K is the null class.
            timestep_cond (`torch.Tensor`): `[B, time_cond_proj_dim]`, `guidance_scale_embedding(w − 1)`.
            return_dict (`bool`, defaults to True): return a [`UNet2DOutput`] instead of a tuple.
        """
        if class_labels is None:
            raise ValueError(f"class_labels are required: ids in [0, {self.config.num_class_embeds - 1}]")
        if timestep_cond is None:
            raise ValueError("timestep_cond is required: guidance_scale_embedding(w - 1, time_cond_proj_dim)")
        labels = torch.as_tensor(class_labels, device=sample.device).long().reshape(-1).expand(sample.shape[0])
        if labels.min() < 0 or labels.max() >= self.config.num_class_embeds:
            raise ValueError(
                f"class_labels must lie in [0, {self.config.num_class_embeds - 1}], got {labels.tolist()}"
            )
        if timestep_cond.shape != (sample.shape[0], self.config.time_cond_proj_dim):
            raise ValueError(f"timestep_cond must have shape {(sample.shape[0], self.config.time_cond_proj_dim)}, "
                             f"got {tuple(timestep_cond.shape)}")  # fmt: skip
        condition = self.class_embedding(labels) + self.guidance_embedding(timestep_cond.to(self.dtype))
        output = self.unet(sample, timestep, class_labels=condition).sample
        return UNet2DOutput(sample=output) if return_dict else (output,)


def check_student_steps(scheduler, num_inference_steps: int) -> None:
    """A consistency student samples on a subset of the grid it was distilled on (`LCMScheduler`'s
    `original_inference_steps`): more steps raise here, naming the range, not deep in the scheduler."""
    limit = getattr(getattr(scheduler, "config", None), "original_inference_steps", None)
    if isinstance(limit, int) and isinstance(num_inference_steps, int) and num_inference_steps > limit:
        raise ValueError(
            f"num_inference_steps must be in [1, {limit}] for this distilled student (its LCMScheduler's "
            f"original_inference_steps: the grid it was distilled on), got {num_inference_steps}"
        )
