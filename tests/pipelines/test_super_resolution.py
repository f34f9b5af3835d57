"""SuperResolutionPipeline: PIL / numpy / torch inputs of any size, batches, tiling equal to the untiled result,
save → from_pretrained bit-identical (ours and diffusers' loader), bad arguments raise naming the argument."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from custom_pipelines.gan.srgan import SRResNetGenerator
from custom_pipelines.pipelines.pipeline_super_resolution import SuperResolutionPipeline, tile_spans


def tiny_pipeline(scale=4, seed=0, **overrides):
    torch.manual_seed(seed)
    upscaler = SRResNetGenerator(scale_factor=scale, **{"num_features": 8, "num_blocks": 1, **overrides})
    with torch.no_grad():  # away from the zero-initialised start: the network, not only the bicubic skip, counts
        for p in upscaler.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe = SuperResolutionPipeline(upscaler=upscaler.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def lr_batch(n=2, h=15, w=22, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [2, 4])
def test_output_shapes_and_types_for_odd_sizes(scale):
    pipe = tiny_pipeline(scale)
    x = lr_batch(2, 9, 13)
    pt = pipe(x, output_type="pt").images
    assert pt.shape == (2, 3, 9 * scale, 13 * scale) and 0 <= pt.min() and pt.max() <= 1
    np_out = pipe(x, output_type="np").images
    assert np_out.shape == (2, 9 * scale, 13 * scale, 3)
    np.testing.assert_allclose(np_out, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = pipe(x, output_type="pil").images
    assert [image.size for image in pil] == [(13 * scale, 9 * scale)] * 2 and pil[0].mode == "RGB"


def test_pil_numpy_and_torch_inputs_agree(pipe):
    array = (np.random.default_rng(0).random((11, 7, 3)) * 255).round().astype(np.uint8)
    image = PIL.Image.fromarray(array)
    from_pil = pipe(image, output_type="pt").images
    from_uint8 = pipe(array, output_type="pt").images
    from_float = pipe(array.astype(np.float32) / 255, output_type="pt").images
    from_torch = pipe(torch.from_numpy(array).permute(2, 0, 1).float() / 255, output_type="pt").images
    assert from_pil.shape == (1, 3, 44, 28)
    for other in (from_uint8, from_float, from_torch):
        torch.testing.assert_close(other, from_pil, rtol=0, atol=1e-6)


def test_batch_equals_single_runs_and_dict_equals_tuple(pipe):
    x = lr_batch(3)
    batch = pipe(x, output_type="pt").images
    for i in range(3):
        torch.testing.assert_close(pipe(x[i], output_type="pt").images[0], batch[i], rtol=0, atol=1e-6)
    output = pipe(x, output_type="pt")
    assert isinstance(output, ImagePipelineOutput)
    (as_tuple,) = pipe(x, output_type="pt", return_dict=False)
    assert torch.equal(as_tuple, output.images)
    images = [PIL.Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for i in range(3)]
    assert len(pipe(images).images) == 3


def test_tiled_equals_untiled_on_an_image_that_fits(pipe):
    x = lr_batch(2, 31, 37)
    whole = pipe(x, output_type="pt").images
    radius = pipe.upscaler.receptive_radius
    for tile_size in (2 * radius + 1, 2 * radius + 5, 20):
        tiled = pipe(x, output_type="pt", tile_size=tile_size).images
        torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    # an overlap below the receptive radius shows the seams: the equality is the overlap's doing
    seams = pipe(x, output_type="pt", tile_size=8, tile_overlap=1).images
    assert (seams - whole).abs().max() > 1e-3
    # an image no larger than the tile is one pass
    torch.testing.assert_close(pipe(x, output_type="pt", tile_size=64).images, whole, rtol=0, atol=0)


def test_tile_spans_cover_the_image_once():
    for size, tile, overlap in [(37, 13, 3), (10, 12, 2), (5, 3, 0), (100, 30, 7)]:
        spans = tile_spans(size, tile, overlap)
        covered = [i for _, _, c0, c1 in spans for i in range(c0, c1)]
        assert covered == list(range(size))
        assert all(0 <= a <= c0 < c1 <= b <= size and b - a <= tile for a, b, c0, c1 in spans)


def test_tiling_bounds_the_largest_tile(pipe, monkeypatch):
    seen = []
    forward = pipe.upscaler.forward
    monkeypatch.setattr(pipe.upscaler, "forward", lambda lr: seen.append(tuple(lr.shape[-2:])) or forward(lr))
    pipe(lr_batch(1, 50, 41), output_type="pt", tile_size=20)
    assert len(seen) > 4 and max(max(s) for s in seen) <= 20


def test_save_from_pretrained_bit_identical_and_diffusers_loader(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["upscaler"] == ["custom_pipelines.gan.srgan", "SRResNetGenerator"]
    assert (tmp_path / "upscaler" / "diffusion_pytorch_model.safetensors").is_file()
    x = lr_batch()
    expected = pipe(x, output_type="pt").images
    loaded = SuperResolutionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded(x, output_type="pt").images, expected)


def test_diffusers_loader_through_the_shim(pipe, tmp_path):
    import custom_pipelines

    if not hasattr(custom_pipelines, "SuperResolutionPipeline"):  # the shim imports it from the top level
        pytest.skip("custom_pipelines does not export SuperResolutionPipeline yet")
    pipe.save_pretrained(tmp_path)
    x = lr_batch()
    expected = pipe(x, output_type="pt").images
    generic = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(generic).__name__ == "SuperResolutionPipeline"
    generic.set_progress_bar_config(disable=True)
    assert torch.equal(generic(x, output_type="pt").images, expected)


def test_grayscale_upscaler():
    pipe = tiny_pipeline(2, in_channels=1, out_channels=1)
    out = pipe(PIL.Image.new("L", (9, 5), 128), output_type="pt").images
    assert out.shape == (1, 1, 10, 18)
    assert pipe(np.full((5, 9, 1), 0.5, dtype=np.float32)).images[0].mode == "L"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"image": None}, ValueError, "image must be a PIL image"),
        ({"image": []}, ValueError, "image must be a PIL image"),
        ({"image": "photo.png"}, TypeError, "image must be PIL images, numpy arrays or torch tensors"),
        ({"image": torch.full((1, 3, 4, 4), 2.0)}, ValueError, "image .* floats in \\[0, 1\\]"),
        ({"image": -torch.ones(1, 3, 4, 4)}, ValueError, "image .* floats in \\[0, 1\\]"),
        ({"image": torch.rand(1, 1, 4, 4)}, ValueError, "image must have 3 channels"),
        ({"image": [PIL.Image.new("RGB", (4, 4)), PIL.Image.new("RGB", (5, 4))]}, ValueError, "one size"),
        ({"output_type": "latent"}, ValueError, "output_type must be one of"),
        ({"tile_size": 4}, ValueError, "tile_size must be an integer > 2 × tile_overlap"),
        ({"tile_size": 16, "tile_overlap": 8}, ValueError, "tile_size must be an integer > 2 × tile_overlap = 16"),
        ({"tile_size": 16.0}, ValueError, "tile_size must be an integer"),
        ({"tile_overlap": -1}, ValueError, "tile_overlap must be an integer >= 0"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(pipe, kwargs, error, message):
    call = {"image": lr_batch(1, 4, 4), **kwargs}
    with pytest.raises(error, match=message):
        pipe(**call)
