"""SRResNet / SRGAN models: shapes for odd sizes, the sub-pixel factor, the image skip, save/load, the losses and
the user-supplied VGG19 content network."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from custom_pipelines.gan.srgan import (
    VGG19_LAYOUT,
    ContentLoss,
    SRGANDiscriminator,
    SRGANGenerator,
    SRResNetGenerator,
    VGGFeatures,
    discriminator_loss,
    generator_adversarial_loss,
    pixel_loss,
    resolve_weights_file,
    straight_through_clamp,
)
from custom_pipelines.hub.configs import load_component_config

TINY = {"num_features": 8, "num_blocks": 2}


def tiny_generator(seed=0, **overrides):
    torch.manual_seed(seed)
    model = SRResNetGenerator(**{**TINY, **overrides})
    with torch.no_grad():  # leave the zero-initialised start, so the tests see the network, not only the skip
        model.tail[-1].weight.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(7, 9), (13, 5), (1, 1)])
def test_generator_output_shape_is_scale_times_the_input_for_odd_sizes(scale, size):
    model = tiny_generator(scale_factor=scale)
    out = model(torch.rand(2, 3, *size) * 2 - 1)
    assert out.shape == (2, 3, scale * size[0], scale * size[1])
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("scale, shuffles", [(2, 1), (4, 2)])
def test_pixel_shuffle_stages_match_the_scale(scale, shuffles):
    model = SRResNetGenerator(scale_factor=scale, **TINY)
    layers = [m for m in model.upsample if isinstance(m, torch.nn.PixelShuffle)]
    assert len(layers) == shuffles and all(layer.upscale_factor == 2 for layer in layers)
    convs = [m for m in model.upsample if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.out_channels == 4 * TINY["num_features"] for conv in convs)  # r² = 4 sub-pixel channels


def test_untrained_generator_is_its_image_skip():
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 11, 6) * 1.6 - 0.8
    for skip in ("bicubic", "bilinear"):
        model = SRResNetGenerator(scale_factor=4, image_skip=skip, **TINY)
        expected = F.interpolate(lr, scale_factor=4, mode=skip, align_corners=False).clamp(-1, 1)
        torch.testing.assert_close(model(lr), expected)


def test_batch_norm_option_and_paper_alias():
    assert SRGANGenerator is SRResNetGenerator
    plain = SRResNetGenerator(**TINY)
    paper = SRResNetGenerator(batch_norm=True, **TINY)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in paper.modules()) == 2 * TINY["num_blocks"] + 1
    assert paper.eval()(torch.zeros(1, 3, 5, 5)).shape == (1, 3, 20, 20)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale_factor": 3}, "scale_factor must be one of \\[2, 4\\], got 3"),
        ({"scale_factor": 8}, "scale_factor must be one of"),
        ({"image_skip": "nearest"}, "image_skip must be one of"),
        ({"num_features": 0}, "num_features must be a positive integer"),
        ({"num_blocks": -1}, "num_blocks must be an integer >= 0"),
        ({"in_channels": 1, "out_channels": 3}, "image_skip='none'"),
    ],
)
def test_bad_generator_configs_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SRResNetGenerator(**{**TINY, **kwargs})


def test_channel_counts_other_than_rgb():
    gray = tiny_generator(in_channels=1, out_channels=1)
    assert gray(torch.zeros(1, 1, 6, 7)).shape == (1, 1, 24, 28)
    to_rgb = tiny_generator(in_channels=1, out_channels=3, image_skip="none")
    assert to_rgb(torch.zeros(2, 1, 3, 3)).shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="lr_images must have shape \\[B, 1, h, w\\]"):
        gray(torch.zeros(1, 3, 6, 6))


def test_receptive_radius_bounds_the_influence_of_a_pixel():
    model = tiny_generator(scale_factor=4)
    radius = model.receptive_radius  # 1 + 2·2 + 1 + (1 + 1/2) + 2/4 = 8
    assert radius == 8
    lr = torch.zeros(1, 3, 41, 41)
    base = model(lr)
    poked = lr.clone()
    poked[..., 20, 20] = 0.5
    changed = (model(poked) - base).abs().sum(1)[0].nonzero()
    lo, hi = changed.min(0).values, changed.max(0).values
    # output rows/cols 4·(20 − r) .. 4·(21 + r) − 1 may change, nothing beyond
    assert lo.min() >= 4 * (20 - radius) and hi.max() <= 4 * (21 + radius) - 1


def test_straight_through_clamp_keeps_gradients():
    x = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    y = straight_through_clamp(x)
    y.sum().backward()
    assert y.tolist() == [-1.0, 0.5, 1.0] and x.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("size", [(96, 96), (17, 23), (5, 4)])
def test_discriminator_scores_any_size(size):
    torch.manual_seed(0)
    d = SRGANDiscriminator(num_features=4, num_stages=3, dense_features=8).eval()
    assert d(torch.randn(3, 3, *size)).shape == (3, 1)
    with pytest.raises(ValueError, match="images must have shape \\[B, 3, H, W\\]"):
        d(torch.randn(3, 1, *size))


def test_discriminator_layout_is_vgg_style():
    d = SRGANDiscriminator(num_features=4, num_stages=4, dense_features=8)
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [1, 2] * 4
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.features) == 7  # none on the first conv
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in SRGANDiscriminator(batch_norm=False).modules())


@pytest.mark.parametrize("cls, kwargs", [(SRResNetGenerator, TINY), (SRGANDiscriminator, {"num_features": 4})])
def test_save_and_from_pretrained_are_bit_identical(tmp_path, cls, kwargs):
    torch.manual_seed(0)
    model = cls(**kwargs).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = cls.from_pretrained(tmp_path).eval()
    x = torch.rand(2, 3, 9, 10)
    assert torch.equal(model(x), loaded(x))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("variant", ["srresnet-photos-x4", "srgan-photos-x4", "srresnet-msrresnet-x4"])
def test_hub_config_variants_build(variant):
    config = load_component_config(variant, "upscaler")
    with torch.device("meta"):
        model = SRResNetGenerator.from_config(config)
    assert model.config.scale_factor == 4
    if variant == "srresnet-msrresnet-x4":  # BasicSR's MSRResNet_x4 sizes
        assert (model.config.num_features, model.config.num_blocks, model.config.image_skip) == (64, 16, "bilinear")
        # MSRResNet's 1,517,571 parameters plus the paper's conv before the long skip (64·64·9 + 64)
        assert sum(p.numel() for p in model.parameters()) == 1_517_571 + 64 * 64 * 9 + 64
    if variant == "srgan-photos-x4":
        SRGANDiscriminator.from_config(load_component_config(variant, "discriminator"))


# ----- losses -----------------------------------------------------------------------------------------------------
def test_pixel_losses():
    sr, hr = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert pixel_loss(sr, hr, "l1").item() == 0.5 and pixel_loss(sr, hr, "mse").item() == 0.25
    with pytest.raises(ValueError, match="pixel loss must be one of"):
        pixel_loss(sr, hr, "huber")


def test_adversarial_losses_values():
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [1.0]])
    sp = F.softplus
    standard_d = sp(-real).mean() + sp(fake).mean()
    torch.testing.assert_close(discriminator_loss(real, fake, "standard"), standard_d)
    torch.testing.assert_close(generator_adversarial_loss(real, fake, "standard"), sp(-fake).mean())
    # relativistic average: real_rel = C(x_r) − E C(x_f) = real − 0, fake_rel = fake − 1
    rel_d = (sp(-(real - 0.0)).mean() + sp(fake - 1.0).mean()) / 2
    rel_g = (sp(real - 0.0).mean() + sp(-(fake - 1.0)).mean()) / 2
    torch.testing.assert_close(discriminator_loss(real, fake, "relativistic"), rel_d)
    torch.testing.assert_close(generator_adversarial_loss(real, fake, "relativistic"), rel_g)
    with pytest.raises(ValueError, match="adversarial loss must be one of"):
        discriminator_loss(real, fake, "hinge")


def test_l1_ssim_fallback_content_loss():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = ContentLoss(None, ssim_weight=1.0)
    assert loss.kind == "l1_ssim" and loss(hr, hr).item() == pytest.approx(0.0, abs=1e-6)
    blurred = F.avg_pool2d(hr, 3, 1, 1)
    assert loss(blurred, hr) > ContentLoss(None, ssim_weight=0.0)(blurred, hr) > 0
    with pytest.raises(ValueError, match="ssim_weight must be >= 0"):
        ContentLoss(None, ssim_weight=-1)


# ----- the VGG19 content network -------------------------------------------------------------------------------------
def fake_vgg_file(path, up_to="conv2_2", prefix="features."):
    """Random VGG19 weights up to `up_to` in torchvision's key layout (a real file would hold all 16 convs)."""
    torch.manual_seed(0)
    state, index, channels = {}, 0, 3
    for entry in VGG19_LAYOUT:
        if entry == "pool":
            index += 1
            continue
        name, width = entry
        state[f"{prefix}{index}.weight"] = torch.randn(width, channels, 3, 3) * 0.05
        state[f"{prefix}{index}.bias"] = torch.zeros(width)
        index, channels = index + 2, width  # conv, relu
        if name == up_to:
            break
    save_file(state, path)
    return path


def test_vgg_features_load_from_user_safetensors(tmp_path):
    path = fake_vgg_file(tmp_path / "vgg19.safetensors")
    phi = VGGFeatures.from_safetensors(path, layer="conv2_2")
    assert not any(p.requires_grad for p in phi.parameters())
    features = phi(torch.rand(2, 3, 16, 16))
    assert features.shape == (2, 128, 8, 8) and features.min() >= 0  # after ReLU, one pool
    before = VGGFeatures.from_safetensors(path, layer="conv2_2", before_activation=True)(torch.rand(1, 3, 16, 16))
    assert before.min() < 0
    # a folder holding model.safetensors and keys without the "features." prefix work too
    folder = tmp_path / "repo"
    folder.mkdir()
    fake_vgg_file(folder / "model.safetensors", prefix="")
    assert VGGFeatures.from_safetensors(folder, layer="conv1_2")(torch.rand(1, 3, 8, 8)).shape == (1, 64, 8, 8)
    loss = ContentLoss(phi)
    hr = torch.rand(1, 3, 16, 16) * 2 - 1
    assert loss.kind == "vgg" and loss(hr, hr).item() == 0.0 and loss(hr.flip(-1), hr).item() > 0


def test_vgg_weights_errors_name_the_problem(tmp_path):
    path = fake_vgg_file(tmp_path / "vgg19.safetensors", up_to="conv1_2")
    with pytest.raises(ValueError, match="lacks VGG19 weights \\['10.bias'"):
        VGGFeatures.from_safetensors(path, layer="conv3_1")
    with pytest.raises(ValueError, match="layer must be one of"):
        VGGFeatures(layer="conv6_1")
    (tmp_path / "vgg.pth").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        resolve_weights_file(tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="has no model.safetensors"):
        resolve_weights_file(tmp_path)  # a folder without model.safetensors
    with pytest.raises(ValueError, match="local Hub cache \\(nothing is downloaded by default\\)"):
        resolve_weights_file("nobody/no-such-vgg19")  # offline: never fetched
