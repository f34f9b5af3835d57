"""CycleGAN models: the ResNet generator (any size, any channel count), the image pool, the objective, and the
hub_configs variants (generators, PatchGAN discriminators, recipe)."""

import inspect
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from custom_pipelines.gan.cyclegan import (
    CycleGANDiscriminators,
    CycleGANGenerator,
    CycleGANGenerators,
    CycleGANObjective,
    ImagePool,
    lsgan_loss,
)
from custom_pipelines.gan.patchgan import PatchGANDiscriminator
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, load_component_config
from custom_pipelines.training.recipe import read_recipe
from training import train_cyclegan

VARIANTS = ("cyclegan-digits-thick-16", "cyclegan-horse2zebra-256")


def tiny_generator(channels=1, seed=0, **overrides):
    torch.manual_seed(seed)
    config = {"in_channels": channels, "out_channels": channels, "base_channels": 4, "num_residual_blocks": 1}
    return CycleGANGenerator(**{**config, **overrides}).eval()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (9, 16), (16, 16), (17, 31)])
def test_any_size_and_channel_count_comes_back_at_its_own_size(channels, size):
    model = tiny_generator(channels)
    x = torch.rand(2, channels, *size) * 2 - 1
    y = model(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0 and torch.isfinite(y).all()


@pytest.mark.parametrize("downsamplings, size, padded", [(2, 16, 16), (2, 17, 20), (2, 3, 8), (0, 1, 4), (3, 9, 16)])
def test_padded_size_is_a_multiple_with_room_for_the_reflections(downsamplings, size, padded):
    assert tiny_generator(num_downsamplings=downsamplings).padded_size(size) == padded


def test_a_padded_input_is_cropped_back_to_the_same_pixels():
    """The crop is the centre the padding put the image at: a 14×14 image equals the middle of its 16×16 run with
    replicate-free reflect padding done by hand."""
    model = tiny_generator()
    x = torch.rand(1, 1, 14, 14) * 2 - 1
    by_hand = model.layers(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))[..., 1:15, 1:15]
    torch.testing.assert_close(model(x), by_hand)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_reflection_pads_fit_the_kernels_whatever_the_channel_count(channels):
    """The huggan port pads the 7×7 stem by `in_channels` (right only for 3): ours pads 3 for 7×7, 1 for 3×3."""
    model = tiny_generator(channels)
    pads = [m.padding[0] for m in model.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert pads[0] == 3 and pads[-1] == 3 and set(pads[1:-1]) == {1}
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) == 1 + 2 + 2 + 2  # stem, down, block, up


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"in_channels": 0}, "in_channels must be an int >= 1"),
        ({"num_downsamplings": -1}, "num_downsamplings must be an int >= 0"),
        ({"base_channels": 2.5}, "base_channels must be an int >= 1"),
        ({"norm": "layer"}, "norm must be one of"),
    ],
)
def test_bad_generator_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_generator(**overrides)


def test_forward_rejects_the_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expects images \(N, 1, H, W\)"):
        tiny_generator(1)(torch.zeros(1, 3, 8, 8))


def test_save_and_from_pretrained_are_bit_identical(tmp_path):
    model = tiny_generator(3, seed=1, norm="batch")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CycleGANGenerator.from_pretrained(tmp_path).eval()
    saved = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), key
    x = torch.rand(2, 3, 9, 11)
    assert torch.equal(model(x), loaded(x))


# ----- the objective ----------------------------------------------------------------------------------------------
class Identity(CycleGANGenerator):
    def forward(self, images):
        return images


def test_identity_and_cycle_losses_are_zero_for_identity_generators():
    pair = CycleGANGenerators(Identity(1, 1, 4, 1, 0), Identity(1, 1, 4, 1, 0))
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    out = pair(a, b)
    objective = CycleGANObjective()
    assert objective.identity_loss(out["identity_a"], a, out["identity_b"], b).item() == 0.0
    _, logs = objective.generator_loss(out, torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2))
    assert logs["identity_loss"].item() == 0.0 and logs["cycle_loss"].item() == 0.0
    assert logs["g_loss"].item() == 0.0  # D says "real" everywhere: nothing left to learn


def test_generator_loss_weights_are_the_papers():
    objective = CycleGANObjective()
    assert (objective.lambda_cycle, objective.identity_weight) == (10.0, 5.0)
    a, b = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    out = {"real_a": a, "real_b": b, "reconstructed_a": a + 0.1, "reconstructed_b": b + 0.2,
           "identity_a": a + 0.3, "identity_b": b + 0.4, "fake_a": a, "fake_b": b}  # fmt: skip
    total, logs = objective.generator_loss(out, torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5))
    # LSGAN (0−1)² + (0.5−1)² = 1.25; cycle 10·(0.1+0.2) = 3; identity 5·(0.3+0.4) = 3.5
    assert math.isclose(total.item(), 1.25 + 3.0 + 3.5, rel_tol=1e-6)
    no_identity = {k: v for k, v in out.items() if not k.startswith("identity")}
    assert math.isclose(objective.generator_loss(no_identity, *([torch.ones(1, 1, 2, 2)] * 2))[0].item(), 3.0,
                        rel_tol=1e-6)  # fmt: skip


def test_lsgan_and_discriminator_losses():
    logits = torch.tensor([0.0, 0.5, 1.0])
    assert math.isclose(lsgan_loss(logits, True).item(), (1 + 0.25) / 3, rel_tol=1e-6)
    assert math.isclose(lsgan_loss(logits, False).item(), (0.25 + 1) / 3, rel_tol=1e-6)
    real, fake = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert CycleGANObjective.discriminator_loss(real, fake).item() == 0.0
    assert CycleGANObjective.discriminator_loss(fake, real).item() == 1.0  # ½·(1 + 1)
    pair = CycleGANDiscriminators(PatchGANDiscriminator(1, 4, 1), PatchGANDiscriminator(1, 4, 1))
    x = torch.rand(2, 1, 16, 16)
    loss, logs = pair(x, x, x, x)
    torch.testing.assert_close(loss, logs["d_a_loss"] + logs["d_b_loss"])


def test_negative_weights_raise():
    with pytest.raises(ValueError, match="lambda_cycle and lambda_identity must be >= 0"):
        CycleGANObjective(lambda_cycle=-1)


# ----- the image pool ---------------------------------------------------------------------------------------------
def numbered(start, n):
    """n one-pixel images whose value is their serial number."""
    return torch.arange(start, start + n, dtype=torch.float32).reshape(n, 1, 1, 1)


def test_pool_returns_the_new_images_while_it_fills():
    pool = ImagePool(50, generator=torch.Generator().manual_seed(0))
    for start in range(0, 50, 10):
        assert torch.equal(pool.query(numbered(start, 10)), numbered(start, 10))
    assert len(pool) == 50 and torch.equal(pool.images, numbered(0, 50))


@pytest.mark.parametrize("probability", [0.5, 0.2, 1.0, 0.0])
def test_a_full_pool_returns_past_fakes_with_the_configured_probability(probability):
    pool = ImagePool(50, probability, generator=torch.Generator().manual_seed(0))
    pool.query(numbered(0, 50))
    n, past = 4000, 0
    for step in range(n // 8):
        new = numbered(1000 + 8 * step, 8)
        out = pool.query(new)
        past += int((out != new).sum())  # a past image has a smaller serial number than any new one
        assert bool((out <= new).all())
    # binomial(n, p): within 4 standard deviations
    assert abs(past - probability * n) <= 4 * math.sqrt(n * probability * (1 - probability)) + 1e-9
    assert len(pool) == 50


def test_pool_is_reproducible_and_round_trips_its_state():
    def run(pool, start):
        return [pool.query(numbered(start + 4 * i, 4)) for i in range(30)]

    first = ImagePool(8, generator=torch.Generator().manual_seed(3))
    run(first, 0)
    state = first.state_dict()
    rng_state = first.generator.get_state()
    second = ImagePool(8, generator=torch.Generator().manual_seed(99))
    second.load_state_dict(state)
    second.generator.set_state(rng_state)
    for x, y in zip(run(first, 500), run(second, 500)):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="holds 8 slots, this pool 4"):
        ImagePool(4).load_state_dict(state)


def test_pool_of_size_zero_is_a_pass_through_and_bad_pools_raise():
    x = torch.rand(3, 1, 2, 2)
    assert ImagePool(0).query(x) is x
    with pytest.raises(ValueError, match="return_past_probability must be in"):
        ImagePool(5, 1.5)
    with pytest.raises(ValueError, match="pool_size must be an int >= 0"):
        ImagePool(-1)


# ----- the variants -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_layout_configs_and_recipe(variant):
    folder = HUB_CONFIGS_DIR / variant
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "CycleGANPipeline"
    assert {k for k in index if not k.startswith("_")} == {"generator_a_to_b", "generator_b_to_a"}
    classes = {"generator_a_to_b": CycleGANGenerator, "generator_b_to_a": CycleGANGenerator,
               "discriminator_a": PatchGANDiscriminator, "discriminator_b": PatchGANDiscriminator}  # fmt: skip
    for name, cls in classes.items():
        config = load_component_config(variant, name)
        assert config["_class_name"] == cls.__name__
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(config) - {"_class_name", "_diffusers_version"} == params, name
        with torch.device("meta"):
            cls.from_config(config)
    recipe = read_recipe(folder / "training_recipe.json", train_cyclegan.build_parser())
    assert (recipe["learning_rate"], recipe["adam_beta1"], recipe["lr_scheduler"]) == (
        2e-4,
        0.5,
        "constant_then_linear",
    )
    assert (recipe["lambda_cycle"], recipe["lambda_identity"], recipe["pool_size"]) == (10.0, 0.5, 50)


def test_the_horse2zebra_variant_has_junyanz_reference_sizes():
    config = load_component_config("cyclegan-horse2zebra-256", "generator_a_to_b")
    assert (config["base_channels"], config["num_residual_blocks"], config["num_downsamplings"]) == (64, 9, 2)
    with torch.device("meta"):
        generator = CycleGANGenerator.from_config(config)
        discriminator = PatchGANDiscriminator.from_config(
            load_component_config("cyclegan-horse2zebra-256", "discriminator_a")
        )
    # resnet_9blocks and the 70×70 basic PatchGAN of pytorch-CycleGAN-and-pix2pix
    assert sum(p.numel() for p in generator.parameters()) == 11_378_179
    assert sum(p.numel() for p in discriminator.parameters()) == 2_764_737 and discriminator.receptive_field == 70
