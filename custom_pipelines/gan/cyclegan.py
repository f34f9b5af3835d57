"""CycleGAN (Zhu et al. 2017): the ResNet generator, the image pool of past fakes, and the objective (LSGAN +
cycle consistency + identity), with junyanz/pytorch-CycleGAN-and-pix2pix's defaults. The discriminators are
`custom_pipelines.gan.patchgan.PatchGANDiscriminator` (70×70 PatchGAN).

Two details differ from the public ports on purpose:
- every reflection pad has the width its convolution needs (3 for the 7×7 stem and head, 1 for the 3×3 convs), for
  any channel count; the huggan port pads by the number of input channels, which is right only for RGB;
- any input size works: the image is padded (reflect, or replicate where it is too small to reflect) to a multiple
  of 2^num_downsamplings (at least two bottleneck pixels per side), run, and cropped back to its own size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from custom_pipelines.gan.layers import check_int

GENERATOR_NORMS = ("instance", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)  # junyanz: no affine, no running statistics
    elif kind == "batch":
        return nn.BatchNorm2d(channels)
    else:
        raise ValueError(f"norm must be one of {GENERATOR_NORMS}, got {kind!r}")


class ResnetBlock(nn.Module):
    """x + [pad 1, conv 3×3, norm, ReLU, pad 1, conv 3×3, norm](x) (Johnson et al. 2016's residual block)."""

    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        bias = norm == "instance"  # a batch norm's shift replaces the conv bias
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            _norm(norm, channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CycleGANGenerator(ModelMixin, ConfigMixin):
    """The CycleGAN ResNet generator: c7s1-k, `num_downsamplings` stride-2 3×3 convs (channels doubling),
    `num_residual_blocks` residual blocks, as many stride-2 transposed convs back, c7s1 to `out_channels`, tanh.

    Args:
        in_channels (`int`, defaults to 3), out_channels (`int`, defaults to 3): image channels (1 or 3, any ≥ 1).
        base_channels (`int`, defaults to 64): channels of the first layer (junyanz `ngf`).
        num_downsamplings (`int`, defaults to 2): stride-2 stages (≥ 0); inputs are padded to a multiple of 2^this.
        num_residual_blocks (`int`, defaults to 9): 9 for 256² images, 6 for 128² in the paper (≥ 0).
        norm (`"instance"` or `"batch"`, defaults to `"instance"`).

    `forward(images [N, in_channels, H, W] in [-1, 1]) -> [N, out_channels, H, W] in [-1, 1]` for any H, W ≥ 1.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 64,
        num_downsamplings: int = 2,
        num_residual_blocks: int = 9,
        norm: Literal["instance", "batch"] = "instance",
    ):
        super().__init__()
        for name, value, minimum in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("base_channels", base_channels, 1),
            ("num_downsamplings", num_downsamplings, 0),
            ("num_residual_blocks", num_residual_blocks, 0),
        ):
            check_int(name, value, minimum)
        if norm not in GENERATOR_NORMS:
            raise ValueError(f"norm must be one of {GENERATOR_NORMS}, got {norm!r}")
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),  # 3 for a 7×7 kernel, whatever the channel count
            nn.Conv2d(in_channels, base_channels, 7, bias=bias),
            _norm(norm, base_channels),
            nn.ReLU(True),
        ]
        channels = base_channels
        for _ in range(num_downsamplings):
            layers += [nn.Conv2d(channels, channels * 2, 3, 2, 1, bias=bias), _norm(norm, channels * 2), nn.ReLU(True)]
            channels *= 2
        layers += [ResnetBlock(channels, norm) for _ in range(num_residual_blocks)]
        for _ in range(num_downsamplings):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 3, 2, 1, output_padding=1, bias=bias),
                _norm(norm, channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, out_channels, 7), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        for module in self.modules():  # junyanz's init_type "normal": N(0, 0.02) weights, zero biases
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (the total downsampling factor)."""
        return 2**self.config.num_downsamplings

    def padded_size(self, size: int) -> int:
        """The side an input side of `size` is run at: a multiple of `size_multiple` with ≥ 2 bottleneck pixels
        (the residual blocks' 1-pixel reflection needs 2) and ≥ 4 pixels (the stem's 3-pixel reflection)."""
        m = self.size_multiple
        return max(-(-size // m) * m, 2 * m, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"CycleGANGenerator expects images (N, {self.config.in_channels}, H, W), got {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        pad_h, pad_w = self.padded_size(height) - height, self.padded_size(width) - width
        if pad_h or pad_w:
            # split the padding around the image so that its content stays centred in the receptive fields
            pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            mode = "reflect" if max(pads[:2]) < width and max(pads[2:]) < height else "replicate"
            images = F.pad(images, pads, mode=mode)
            out = self.layers(images)
            return out[..., pads[2] : pads[2] + height, pads[0] : pads[0] + width]
        return self.layers(images)


class ImagePool:
    """A buffer of past generated images (Shrivastava et al. 2017; CycleGAN §4): the discriminator sees a mix of
    the newest fakes and older ones, which damps oscillation.

    `query(images)` goes image by image: while the pool holds fewer than `pool_size` images it stores the image
    and returns it; once full, with probability `return_past_probability` it returns a random stored image and
    stores the new one in its place, otherwise it returns the new image. `pool_size=0` returns the input.

    Randomness comes from `generator` (a `torch.Generator`) or, when None, the global torch RNG — what training
    uses, since accelerate checkpoints that state on every rank. `state_dict()` / `load_state_dict()` hold the
    stored images (padded to `pool_size`) and their count.
    """

    def __init__(self, pool_size: int = 50, return_past_probability: float = 0.5, generator=None):
        check_int("pool_size", pool_size, 0)
        if not 0.0 <= return_past_probability <= 1.0:
            raise ValueError(f"return_past_probability must be in [0, 1], got {return_past_probability}")
        self.pool_size, self.return_past_probability, self.generator = pool_size, return_past_probability, generator
        self.images: torch.Tensor | None = None  # [pool_size, C, H, W] once the first image arrives
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] (detached) → N images to show the discriminator, each new or from the pool."""
        if self.pool_size == 0:
            return images
        images = images.detach()
        if self.images is None:
            self.images = images.new_zeros((self.pool_size, *images.shape[1:]))
        out = []
        for image in images:
            if self.count < self.pool_size:
                self.images[self.count] = image
                self.count += 1
                out.append(image)
            elif self._rand().item() < self.return_past_probability:
                index = int(self._rand().item() * self.pool_size)
                out.append(self.images[index].clone())
                self.images[index] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        # a copy: on the CPU `.cpu()` is the same tensor, and the pool keeps writing into it
        return {"images": None if self.images is None else self.images.detach().cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        images = state["images"]
        self.images, self.count = (None if images is None else images.clone()), int(state["count"])
        if self.images is not None and (self.images.shape[0] != self.pool_size or self.count > self.pool_size):
            raise ValueError(f"pool state holds {self.images.shape[0]} slots, this pool {self.pool_size}")


# ----- the objective ---------------------------------------------------------------------------------------------
def lsgan_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN (Mao et al. 2017): E[(D(x) − 1)²] for real targets, E[D(x)²] for fake ones."""
    target = 1.0 if target_is_real else 0.0
    return F.mse_loss(logits, torch.full_like(logits, target))


class CycleGANObjective:
    """The CycleGAN losses with the paper's weights (junyanz names in brackets).

    Generators: LSGAN(D_B(G(a)), real) + LSGAN(D_A(F(b)), real) + λ_cyc·(‖F(G(a)) − a‖₁ + ‖G(F(b)) − b‖₁)
    + λ_id·(‖G(b) − b‖₁ + ‖F(a) − a‖₁), with λ_cyc = `lambda_cycle` (10, [lambda_A = lambda_B]) and
    λ_id = `lambda_identity` · λ_cyc (0.5 · 10 = 5, [lambda_identity] is relative, as in junyanz).
    Discriminators: ½·(LSGAN(D(real), real) + LSGAN(D(fake from the pool), fake)) each.
    """

    def __init__(self, lambda_cycle: float = 10.0, lambda_identity: float = 0.5):
        if lambda_cycle < 0 or lambda_identity < 0:
            raise ValueError(f"lambda_cycle and lambda_identity must be >= 0, got {lambda_cycle}, {lambda_identity}")
        self.lambda_cycle, self.lambda_identity = float(lambda_cycle), float(lambda_identity)

    @property
    def identity_weight(self) -> float:
        return self.lambda_identity * self.lambda_cycle

    @staticmethod
    def identity_loss(identity_a: torch.Tensor, real_a: torch.Tensor, identity_b: torch.Tensor, real_b: torch.Tensor):
        """‖F(a) − a‖₁ + ‖G(b) − b‖₁ (unweighted): 0 exactly for generators that return their input."""
        return F.l1_loss(identity_a, real_a) + F.l1_loss(identity_b, real_b)

    @staticmethod
    def cycle_loss(reconstructed_a, real_a, reconstructed_b, real_b) -> torch.Tensor:
        """‖F(G(a)) − a‖₁ + ‖G(F(b)) − b‖₁ (unweighted)."""
        return F.l1_loss(reconstructed_a, real_a) + F.l1_loss(reconstructed_b, real_b)

    def generator_loss(self, out: dict, logits_fake_a: torch.Tensor, logits_fake_b: torch.Tensor):
        """`out` from the generator pair's forward (real_/fake_/reconstructed_/identity_ a, b); the logits are
        D_A(fake_a) and D_B(fake_b). Returns (total, logs)."""
        adversarial = lsgan_loss(logits_fake_b, True) + lsgan_loss(logits_fake_a, True)
        cycle = self.cycle_loss(out["reconstructed_a"], out["real_a"], out["reconstructed_b"], out["real_b"])
        total = adversarial + self.lambda_cycle * cycle
        logs = {"g_adversarial_loss": adversarial.detach(), "cycle_loss": cycle.detach()}
        if "identity_a" in out:
            identity = self.identity_loss(out["identity_a"], out["real_a"], out["identity_b"], out["real_b"])
            total = total + self.identity_weight * identity
            logs["identity_loss"] = identity.detach()
        logs["g_loss"] = total.detach()
        return total, logs

    @staticmethod
    def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """½·(LSGAN(real, 1) + LSGAN(fake, 0)) for one discriminator (halved: D learns slower than G, junyanz)."""
        return 0.5 * (lsgan_loss(logits_real, True) + lsgan_loss(logits_fake, False))


class CycleGANGenerators(nn.Module):
    """The two generators as one module, so one DDP wrapper syncs both and one optimizer steps both.

    `forward(real_a, real_b, identity=True)` → dict of real_/fake_/reconstructed_ a and b (fake_b = G(a),
    reconstructed_a = F(G(a)), ...) and, with `identity`, identity_a = F(a), identity_b = G(b)."""

    def __init__(self, generator_a_to_b: CycleGANGenerator, generator_b_to_a: CycleGANGenerator):
        super().__init__()
        self.generator_a_to_b, self.generator_b_to_a = generator_a_to_b, generator_b_to_a

    def rewrap(self, generator_a_to_b: nn.Module, generator_b_to_a: nn.Module) -> CycleGANGenerators:
        """The same pair around other generators (FSDP's gather builds an unsharded copy this way)."""
        return type(self)(generator_a_to_b, generator_b_to_a)

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor, identity: bool = True) -> dict:
        fake_b, fake_a = self.generator_a_to_b(real_a), self.generator_b_to_a(real_b)
        out = {
            "real_a": real_a,
            "real_b": real_b,
            "fake_a": fake_a,
            "fake_b": fake_b,
            "reconstructed_a": self.generator_b_to_a(fake_b),
            "reconstructed_b": self.generator_a_to_b(fake_a),
        }
        if identity:
            out["identity_a"], out["identity_b"] = self.generator_b_to_a(real_a), self.generator_a_to_b(real_b)
        return out


class CycleGANDiscriminators(nn.Module):
    """D_A (real A vs F(b)) and D_B (real B vs G(a)) as one module: `forward(real_a, fake_a, real_b, fake_b)` →
    the summed discriminator loss and its parts."""

    def __init__(self, discriminator_a: nn.Module, discriminator_b: nn.Module):
        super().__init__()
        self.discriminator_a, self.discriminator_b = discriminator_a, discriminator_b

    def rewrap(self, discriminator_a: nn.Module, discriminator_b: nn.Module) -> CycleGANDiscriminators:
        """The same pair around other discriminators (FSDP's gather builds an unsharded copy this way)."""
        return type(self)(discriminator_a, discriminator_b)

    def forward(self, real_a, fake_a, real_b, fake_b) -> tuple[torch.Tensor, dict]:
        loss_a = CycleGANObjective.discriminator_loss(self.discriminator_a(real_a), self.discriminator_a(fake_a))
        loss_b = CycleGANObjective.discriminator_loss(self.discriminator_b(real_b), self.discriminator_b(fake_b))
        return loss_a + loss_b, {"d_a_loss": loss_a.detach(), "d_b_loss": loss_b.detach()}
