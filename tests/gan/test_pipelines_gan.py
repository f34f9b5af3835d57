import importlib
import json

import numpy as np
import PIL.Image
import pytest
import torch

from custom_pipelines.pipelines.pipeline_gan import GANPipeline
from custom_pipelines.pipelines.pipeline_stylegan import StyleGANPipeline, StyleMixOutput

# tiny seeded model of conftest.py, seed 0, ψ = 0.7, const noise: bottom-right 3×3 pixels
FROZEN_STYLEGAN_SLICE = np.array([0.67573, 0.60105, 0.80138, 0.09279, 0.67276, 0.61150, 0.46448, 0.16104, 0.43885])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pipe(stylegan):
    return StyleGANPipeline(stylegan=stylegan)


def assert_model_index_names_custom_modules(folder, component):
    index = json.loads((folder / "model_index.json").read_text())
    library, class_name = index[component]
    assert library.startswith("custom_pipelines."), index
    assert isinstance(getattr(importlib.import_module(library), class_name), type)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_stylegan_output_types_shapes_and_ranges(pipe, output_type):
    images = pipe(batch_size=2, generator=gen(), truncation_psi=0.7, output_type=output_type).images
    if output_type == "pil":
        assert len(images) == 2 and all(isinstance(i, PIL.Image.Image) for i in images)
        assert images[0].size == (16, 16) and images[0].mode == "L"
        return
    assert images.shape == ((2, 16, 16, 1) if output_type == "np" else (2, 1, 16, 16))
    assert images.min() >= 0 and images.max() <= 1 and images.max() > images.min()


def test_stylegan_frozen_slice_and_dict_equals_tuple(pipe):
    images = pipe(generator=gen(), truncation_psi=0.7, output_type="np").images
    (as_tuple,) = pipe(generator=gen(), truncation_psi=0.7, output_type="np", return_dict=False)
    assert np.array_equal(images, as_tuple)
    np.testing.assert_allclose(images[0, -3:, -3:, 0].flatten(), FROZEN_STYLEGAN_SLICE, atol=1e-4)


@pytest.mark.parametrize("noise_mode", ["const", "random", "none"])
def test_stylegan_batch_with_a_generator_per_image_equals_single_runs(pipe, noise_mode):
    batch = pipe(batch_size=2, generator=[gen(1), gen(2)], noise_mode=noise_mode, output_type="pt").images
    for i, seed in enumerate((1, 2)):
        single = pipe(generator=gen(seed), noise_mode=noise_mode, output_type="pt").images
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-6, rtol=1e-5)


def test_stylegan_latents_and_w_inputs(pipe, stylegan):
    z = torch.randn(2, 16, generator=gen())
    from_z = pipe(batch_size=2, latents=z, truncation_psi=0.5, output_type="pt").images
    assert torch.equal(from_z, pipe(batch_size=2, generator=gen(), truncation_psi=0.5, output_type="pt").images)
    w = stylegan.mapping(z)[:, 0]
    for w_input in (w, w.unsqueeze(1).repeat(1, stylegan.num_ws, 1)):
        from_w = pipe(batch_size=2, w=w_input, truncation_psi=0.5, output_type="pt").images
        torch.testing.assert_close(from_w, from_z)


def test_stylegan_save_load_identical_and_model_index(pipe, tmp_path):
    expected = pipe(batch_size=2, generator=gen(), truncation_psi=0.7, output_type="np").images
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "stylegan" / "diffusion_pytorch_model.safetensors").is_file()
    assert_model_index_names_custom_modules(tmp_path, "stylegan")
    loaded = StyleGANPipeline.from_pretrained(tmp_path)
    assert torch.equal(loaded.stylegan.mapping.w_avg, pipe.stylegan.mapping.w_avg)
    assert np.array_equal(loaded(batch_size=2, generator=gen(), truncation_psi=0.7, output_type="np").images, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"truncation_psi": 3.0}, "truncation_psi"),
        ({"truncation_cutoff": 99}, "truncation_cutoff"),
        ({"noise_mode": "loud"}, "noise_mode"),
        ({"output_type": "latent"}, "output_type"),
        ({"batch_size": 2, "latents": torch.zeros(3, 16)}, "latents"),
        ({"latents": torch.zeros(1, 16), "w": torch.zeros(1, 16)}, "not both"),
        ({"w": torch.zeros(1, 3, 16)}, "w must have shape"),
        ({"batch_size": 2, "generator": [gen()]}, "list of generators"),
    ],
)
def test_stylegan_bad_arguments_raise(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_style_mix_grid_and_cells(pipe, stylegan):
    result = pipe.style_mix([1, 2], [3, 4, 5], crossover=2, output_type="pt")
    assert isinstance(result, StyleMixOutput)
    assert result.grid.size == (4 * 16, 3 * 16) and result.images.shape == (6, 1, 16, 16)
    z = {s: torch.randn(1, 16, generator=gen(s)) for s in (1, 2, 3, 4, 5)}
    # cell (row A=2, column B=4): layers < 2 from seed 2, the rest from seed 4
    ws = stylegan.mix_styles(z[2], z[4], crossover=2)
    expected = (stylegan.synthesis(ws, noise_mode="const") / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(result.images[3 + 1 : 3 + 2], expected)
    # the grid's top row holds source B = seed 3 next to a black corner
    grid = np.asarray(result.grid.convert("L"), dtype=np.float32) / 255
    single = pipe(generator=gen(3), output_type="np").images[0, :, :, 0]
    np.testing.assert_allclose(grid[:16, 16:32], single, atol=1 / 255 + 1e-6)
    assert grid[:16, :16].max() == 0
    grid_again, images = pipe.style_mix([1, 2], [3, 4, 5], crossover="coarse", return_dict=False)
    assert len(images) == 6 and isinstance(images[0], PIL.Image.Image)


def test_style_mix_bad_arguments(pipe):
    with pytest.raises(ValueError, match="seeds_a"):
        pipe.style_mix([], [1])
    with pytest.raises(ValueError, match="crossover"):
        pipe.style_mix([1], [2], crossover=99)
    with pytest.raises(ValueError, match="no 'fine' style layers"):
        pipe.style_mix([1], [2], crossover="fine")


def test_interpolate_ends_at_the_two_latents(pipe):
    z0, z1 = torch.randn(16, generator=gen(1)), torch.randn(1, 16, generator=gen(2))
    images = pipe.interpolate(z0, z1, steps=5, truncation_psi=0.8, output_type="pt").images
    assert images.shape == (5, 1, 16, 16)
    for index, z in ((0, z0), (-1, z1)):
        expected = pipe(latents=z.reshape(1, 16), truncation_psi=0.8, output_type="pt").images
        torch.testing.assert_close(images[index : index + 1 or None], expected)
    with pytest.raises(ValueError, match="steps"):
        pipe.interpolate(z0, z1, steps=1)
    with pytest.raises(ValueError, match="z1"):
        pipe.interpolate(z0, torch.zeros(2, 16))


@pytest.mark.parametrize("model_fixture", ["progan", "dcgan"])
def test_gan_pipeline_outputs_save_load_and_model_index(request, model_fixture, tmp_path):
    model = request.getfixturevalue(model_fixture)
    pipe = GANPipeline(gan_generator=model)
    channels, z_dim = model.config.img_channels, model.config.z_dim
    images = pipe(batch_size=2, generator=gen(), output_type="np").images
    assert images.shape == (2, 16, 16, channels) and 0 <= images.min() and images.max() <= 1
    assert pipe(batch_size=2, generator=gen(), output_type="pt").images.shape == (2, channels, 16, 16)
    pil = pipe(generator=gen()).images
    assert pil[0].size == (16, 16) and pil[0].mode == ("RGB" if channels == 3 else "L")
    (as_tuple,) = pipe(batch_size=2, generator=gen(), output_type="np", return_dict=False)
    assert np.array_equal(images, as_tuple)
    batch = pipe(batch_size=2, generator=[gen(1), gen(2)], output_type="np").images
    np.testing.assert_allclose(batch[1:], pipe(generator=gen(2), output_type="np").images, atol=1e-5)

    pipe.save_pretrained(tmp_path)
    assert_model_index_names_custom_modules(tmp_path, "gan_generator")
    loaded = GANPipeline.from_pretrained(tmp_path)
    assert type(loaded.gan_generator) is type(model)
    assert np.array_equal(loaded(batch_size=2, generator=gen(), output_type="np").images, images)
    with pytest.raises(ValueError, match="latents"):
        pipe(batch_size=1, latents=torch.zeros(1, z_dim + 1))
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=-1)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="tensor")
