"""CycleGANPipeline: PIL / numpy / torch inputs of any size, both directions, save / load, bad arguments."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from custom_pipelines.gan.cyclegan import CycleGANGenerator
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.pipelines.pipeline_cyclegan import CycleGANPipeline

VARIANT = "cyclegan-digits-thick-16"


def tiny_pipeline(channels=1) -> CycleGANPipeline:
    generators = []
    for seed, name in enumerate(("generator_a_to_b", "generator_b_to_a")):
        torch.manual_seed(seed)
        config = {**load_component_config(VARIANT, name), "in_channels": channels, "out_channels": channels}
        generators.append(CycleGANGenerator.from_config({**config, "base_channels": 4, "num_residual_blocks": 1}))
    pipe = CycleGANPipeline(*generators)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def image01():
    """A [1, 1, 13, 10] image in [0, 1] with 8-bit values, so PIL, numpy and torch carry the same pixels."""
    return torch.randint(0, 256, (1, 1, 13, 10), generator=torch.Generator().manual_seed(0)).float() / 255


def test_pil_numpy_and_torch_inputs_give_the_same_result(pipe, image01):
    pil = PIL.Image.fromarray((image01[0, 0].numpy() * 255).round().astype(np.uint8), mode="L")
    from_pt = pipe(image01, output_type="pt").images
    from_np = pipe(image01[0].permute(1, 2, 0).numpy(), output_type="pt").images
    from_pil = pipe(pil, output_type="pt").images
    assert from_pt.shape == (1, 1, 13, 10) and 0 <= from_pt.min() and from_pt.max() <= 1
    torch.testing.assert_close(from_np, from_pt, rtol=0, atol=0)
    torch.testing.assert_close(from_pil, from_pt, rtol=0, atol=1e-6)


def test_directions_run_their_own_generator(pipe, image01):
    x = image01 * 2 - 1
    for direction, model in (("a_to_b", pipe.generator_a_to_b), ("b_to_a", pipe.generator_b_to_a)):
        expected = (model(x) + 1) / 2
        got = pipe(image01, direction=direction, output_type="pt").images
        torch.testing.assert_close(got, expected.clamp(0, 1), rtol=0, atol=1e-6)
    a_to_b = pipe(image01, output_type="pt").images
    assert not torch.allclose(a_to_b, pipe(image01, direction="b_to_a", output_type="pt").images)


def test_frozen_output_slice(pipe, image01):
    out = pipe(image01, output_type="np").images
    assert out.shape == (1, 13, 10, 1)
    expected = np.array([[0.5515, 0.5856, 0.5053], [0.6449, 0.6959, 0.8381], [0.6475, 0.5181, 0.4925]])
    np.testing.assert_allclose(out[0, :3, :3, 0], expected, atol=1e-4)


def test_output_types_dict_and_tuple_and_batches(pipe, image01):
    batch = torch.cat([image01, image01.flip(-1)])
    pil = pipe(batch).images
    assert len(pil) == 2 and pil[0].mode == "L" and pil[0].size == (10, 13)
    as_tuple = pipe(batch, output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(pipe(batch, output_type="pt"), ImagePipelineOutput)
    singles = torch.cat([pipe(batch[i : i + 1], output_type="pt").images for i in range(2)])
    torch.testing.assert_close(as_tuple[0], singles)
    as_list = pipe([batch[0], batch[1]], output_type="pt").images  # a list of [C, H, W] tensors is a batch too
    torch.testing.assert_close(as_list, singles)


def test_rgb_generators_take_grayscale_pil_as_rgb():
    pipe = tiny_pipeline(3)
    out = pipe(PIL.Image.new("L", (9, 7), 128), output_type="np").images
    assert out.shape == (1, 7, 9, 3)
    assert pipe(PIL.Image.new("RGB", (9, 7))).images[0].mode == "RGB"


def test_save_and_from_pretrained_are_bit_identical(pipe, image01, tmp_path):
    pipe.save_pretrained(tmp_path)
    for name in ("generator_a_to_b", "generator_b_to_a"):
        assert (tmp_path / name / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CycleGANPipeline.from_pretrained(tmp_path)
    for name in ("generator_a_to_b", "generator_b_to_a"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    for direction in ("a_to_b", "b_to_a"):
        a = pipe(image01, direction=direction, output_type="pt").images
        assert torch.equal(a, loaded(image01, direction=direction, output_type="pt").images)
    # diffusers' own loader through the saved folder's shims
    generic = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(generic).__name__ == "CycleGANPipeline"
    assert torch.equal(generic(image01, output_type="pt").images, pipe(image01, output_type="pt").images)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"direction": "x_to_y"}, ValueError, r"direction must be one of \('a_to_b', 'b_to_a'\), got 'x_to_y'"),
        ({"direction": None}, ValueError, "direction must be one of"),
        ({"output_type": "latent"}, ValueError, "output_type must be one of"),
        ({"image": "picture.png"}, TypeError, "image must be a PIL image, a numpy array, a torch tensor"),
        ({"image": []}, TypeError, "image must be"),
        ({"image": torch.rand(1, 3, 8, 8)}, ValueError, r"image must have 1 channel\(s\) for this generator"),
        ({"image": [PIL.Image.new("L", (8, 8)), PIL.Image.new("L", (9, 8))]}, ValueError, "the same size"),
    ],
)
def test_bad_arguments_raise_naming_them(pipe, image01, kwargs, error, message):
    with pytest.raises(error, match=message):
        pipe(**{"image": image01, **kwargs})


def test_uint8_numpy_equals_its_float_version(pipe, image01):
    array = (image01[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_uint8 = pipe(array, output_type="pt").images
    torch.testing.assert_close(from_uint8, pipe(image01, output_type="pt").images, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"must hold floats in \[0, 1\]"):  # 0–255 as floats is not an image
        pipe(array.astype(np.float32), output_type="pt")
