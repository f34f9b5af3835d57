"""A class-conditional UNet that sees its class as extra input channels (a learned embedding map).

The alternative to diffusers' `UNet2DModel(num_class_embeds=...)`, which adds a class embedding to the timestep
embedding (Dhariwal & Nichol 2021, §4). Here the class enters at the input instead: an embedding e_y ∈ R^E is
broadcast to an [E, H, W] map and concatenated with x_t, so the first convolution sees the class at every pixel.
Both give the same `forward(sample, timestep, class_labels).sample` interface and reserve class id
`num_classes` for the learned "null" class of classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

# Every config key except these two is UNet2DModel's own and is passed to the wrapped UNet unchanged.
_OWN_KEYS = ("num_classes", "class_embed_dim")
_UNET_KEYS = tuple(
    name
    for name in inspect.signature(UNet2DModel.__init__).parameters
    if name not in ("self", "class_embed_type", "num_class_embeds")
)


class ClassConcatUNet2DModel(ModelMixin, ConfigMixin):
    r"""`UNet2DModel` whose input is x_t concatenated with a learned class-embedding map.

    `in_channels` / `out_channels` are the image's channels (as for `UNet2DModel`); the wrapped UNet gets
    `in_channels + class_embed_dim` input channels. All other arguments are `UNet2DModel`'s, with its defaults.

    Args:
        num_classes (`int`, defaults to 10): real classes; the embedding has `num_classes + 1` rows, the last one
            (id `num_classes`) being the "null" class used for unconditional predictions.
        class_embed_dim (`int`, defaults to 4): E, the channels of the class map, ≥ 1.
        sample_size, in_channels, out_channels, ...: see [`UNet2DModel`].
    """

    # the inner UNet2DModel's blocks checkpoint themselves (diffusers' `enable_gradient_checkpointing`)
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_classes: int = 10,
        class_embed_dim: int = 4,
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
        for name, value in (("num_classes", num_classes), ("class_embed_dim", class_embed_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.class_embedding = nn.Embedding(num_classes + 1, class_embed_dim)
        unet_kwargs = {name: self.config[name] for name in _UNET_KEYS}
        self.unet = UNet2DModel(**{**unet_kwargs, "in_channels": in_channels + class_embed_dim})

    @property
    def null_class_id(self) -> int:
        """The id of the learned "null" class (the unconditional branch of classifier-free guidance)."""
        return self.config.num_classes

    def class_map(self, class_labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """e_y broadcast over the image: `[B]` ids in [0, num_classes] → `[B, E, height, width]`."""
        embedding = self.class_embedding(class_labels)
        return embedding[:, :, None, None].expand(-1, -1, height, width)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        r"""Predict the scheduler's target (ε, x₀ or v) for x_t of class y.

        Args:
            sample (`torch.Tensor`): x_t, `[B, in_channels, H, W]`.
            timestep (`torch.Tensor`, `float` or `int`): t, one for all or `[B]`.
            class_labels (`torch.Tensor`): `[B]` integer ids in [0, num_classes]; `num_classes` is the null class.
            return_dict (`bool`, defaults to True): return a [`UNet2DOutput`] instead of a tuple.
        """
        if class_labels is None:
            raise ValueError("class_labels are required: pass ids in [0, num_classes], num_classes for the null class")
        class_labels = torch.as_tensor(class_labels, device=sample.device).long().reshape(-1)
        if class_labels.numel() == 1:
            class_labels = class_labels.expand(sample.shape[0])
        if class_labels.shape[0] != sample.shape[0]:
            raise ValueError(f"expected 1 or {sample.shape[0]} class_labels, got {class_labels.shape[0]}")
        if class_labels.min() < 0 or class_labels.max() > self.config.num_classes:
            raise ValueError(f"class_labels must lie in [0, {self.config.num_classes}], got {class_labels.tolist()}")
        class_map = self.class_map(class_labels, sample.shape[-2], sample.shape[-1]).to(sample.dtype)
        output = self.unet(torch.cat([sample, class_map], dim=1), timestep).sample
        if not return_dict:
            return (output,)
        return UNet2DOutput(sample=output)
