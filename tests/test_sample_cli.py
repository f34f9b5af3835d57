"""`training/sample.py` on a saved tiny pipeline of every type: the conditioning flags each type takes (prompts, class
labels, input images, strength, direction), `--num_images` honoured exactly, the grid's layout, one ValueError naming
the flag for a flag the pipeline does not take, and no abbreviated flags. The saved folders are shared with the
evaluate tests (tests/evaluation/test_evaluate_cli.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from custom_pipelines.call_inputs import describe_pipeline, plan_sampling, sample_batches
from custom_pipelines.pipelines.utils import sample_images
from training.sample import main, parse_args

TILE = 64  # image_grid enlarges tiles to at least 64 pixels (an integer nearest-neighbour factor)


def build_tiny(kind: str):
    """A tiny seeded pipeline of every saved type (the builders of the pipelines' own tests)."""
    from tests.hub import tiny_pipelines

    if kind in tiny_pipelines.KINDS:  # ddpm, cfg (10 classes), stylegan, gan
        return tiny_pipelines.build(kind)
    if kind.startswith("ldm-"):  # none / class (3 classes) / text, 16×16 pixels
        from tests.pipelines.test_latent_diffusion import make

        return make(kind.removeprefix("ldm-"))
    if kind == "sr":
        from tests.pipelines.test_super_resolution import tiny_pipeline

        return tiny_pipeline(scale=2)
    if kind == "cyclegan":
        from tests.pipelines.test_cyclegan_pipeline import tiny_pipeline

        return tiny_pipeline(channels=1)
    if kind == "img2img":  # a folder saved by the img2img pipeline itself
        from custom_pipelines import DDPMAncestralScheduler, DiffusionImg2ImgPipeline
        from tests.utils import scheduler_config, tiny_unet

        return DiffusionImg2ImgPipeline(tiny_unet(), DDPMAncestralScheduler.from_config(scheduler_config()))
    raise ValueError(f"unknown tiny pipeline kind {kind!r}")


def tiny_pipeline_folders(root: Path) -> Callable[[str], str]:
    """`folder(kind)` → the folder under `root` of a saved tiny pipeline of `kind` (built and saved on first use)."""

    def folder(kind: str) -> str:
        path = root / kind
        if not path.is_dir():
            with torch.random.fork_rng(devices=[]):
                build_tiny(kind).save_pretrained(path)
        return str(path)

    return folder


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory):
    return tiny_pipeline_folders(tmp_path_factory.mktemp("tiny-pipelines"))


@pytest.fixture(scope="session")
def input_images(tmp_path_factory):
    """A folder of three grayscale inputs, two 8×8 and one 6×10 (sorted: a, b, c), and one 8×8 file."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (8, 8), "b.png": (8, 8), "c.png": (6, 10)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L").save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def grid_size(num_tiles: int, per_row: int, tile: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of image_grid's output: 1-pixel separators around tiles enlarged to >= TILE pixels."""
    scale = max(1, -(-TILE // max(tile)))
    h, w = tile[0] * scale, tile[1] * scale
    rows = math.ceil(num_tiles / per_row)
    return per_row * (w + 1) + 1, rows * (h + 1) + 1


def sample(folder, tmp_path, *argv: str) -> Image.Image:
    output = tmp_path / "grid.png"
    args = parse_args(["--pipeline", folder, "--output", str(output), *argv])
    assert main(args) == str(output) and output.is_file()
    with Image.open(output) as image:
        return image.copy()


# ----- generators: unconditional, GAN, StyleGAN ------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "steps"), [("ddpm", ["--num_inference_steps", "2"]), ("gan", []), ("stylegan", [])])
def test_num_images_is_honoured_for_generators(saved_pipeline, tmp_path, capsys, kind, steps):
    grid = sample(saved_pipeline(kind), tmp_path, "--num_images", "5", *steps)
    assert grid.size == grid_size(5, 3, (8, 8))  # near-square: 3 per row, 2 rows
    assert "5 images" in capsys.readouterr().out


def test_images_do_not_depend_on_the_batch_size(saved_pipeline, tmp_path):
    argv = ["--num_images", "3", "--num_inference_steps", "2", "--seed", "7"]
    whole = np.asarray(sample(saved_pipeline("ddpm"), tmp_path, *argv))
    split = np.asarray(sample(saved_pipeline("ddpm"), tmp_path, *argv, "--batch_size", "2"))
    np.testing.assert_array_equal(whole, split)
    other_seed = np.asarray(sample(saved_pipeline("ddpm"), tmp_path, *argv[:-1], "8"))
    assert not np.array_equal(whole, other_seed)


@pytest.mark.parametrize(
    ("kind", "argv", "flag"),
    [
        ("gan", ["--prompt", "a digit"], "--prompt"),
        ("gan", ["--num_inference_steps", "2"], "--num_inference_steps"),
        ("gan", ["--scheduler", "ddim"], "--scheduler"),
        ("stylegan", ["--class_labels", "3"], "--class_labels"),
        ("ddpm", ["--class_labels", "all"], "--class_labels"),
        ("ddpm", ["--guidance_scale", "2"], "--guidance_scale"),
        ("ddpm", ["--strength", "0.5"], "--strength"),
        ("ddpm", ["--direction", "a_to_b"], "--direction"),
        ("cfg", ["--class_labels", "none"], "--class_labels"),
        ("cfg", ["--prompt", "a digit"], "--prompt"),
        ("ldm-text", [], "--prompt"),
        ("ldm-none", ["--guidance_scale", "3"], "--guidance_scale"),
        ("sr", [], "--image"),
        ("cyclegan", ["--image", "{image}", "--strength", "0.5"], "--strength"),
        ("sr", ["--image", "{image}", "--direction", "b_to_a"], "--direction"),
        ("cyclegan", ["--image", "{image}", "--direction", "up"], "--direction"),
        ("sr", ["--image", "{folder}", "--num_images", "4"], "--num_images"),
        ("gan", ["--image", "{image}"], "--image"),
        ("ddpm", ["--image", "{image}", "--strength", "0.4", "--num_inference_steps", "2"], "--strength"),
    ],
)
def test_a_flag_the_pipeline_does_not_take_is_a_value_error_naming_it(
    saved_pipeline, input_images, tmp_path, kind, argv, flag
):
    argv = [a.format(image=input_images / "a.png", folder=input_images) for a in argv]
    kind_classes = {"gan": "GANPipeline", "stylegan": "StyleGANPipeline", "ddpm": "UnconditionalDiffusionPipeline",
                    "cfg": "ClassConditionalDiffusionPipeline", "ldm-text": "LatentDiffusionPipeline",
                    "ldm-none": "LatentDiffusionPipeline", "sr": "SuperResolutionPipeline",
                    "cyclegan": "CycleGANPipeline"}  # fmt: skip
    with pytest.raises(ValueError, match=flag) as error:
        sample(saved_pipeline(kind), tmp_path, *argv)
    if "does not apply" in str(error.value) or "is required" in str(error.value):
        assert kind_classes[kind] in str(error.value)  # and the pipeline class
    assert not (tmp_path / "grid.png").exists()


def test_flags_are_checked_before_loading_and_never_abbreviated(tmp_path):
    base = ["--pipeline", "x", "--output", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit):
        parse_args([*base, "--num_imag", "3"])  # not taken for --num_images
    with pytest.raises(SystemExit):
        parse_args([*base, "--prom", "a"])
    for argv, flag in ((["--strength", "1.5"], "--strength"), (["--class_labels", "a,b"], "--class_labels"),
                       (["--image", str(tmp_path / "missing")], "--image"), (["--num_images", "0"], "--num_images"),
                       (["--batch_size", "0"], "--batch_size")):  # fmt: skip
        with pytest.raises(ValueError, match=flag):
            parse_args([*base, *argv])


# ----- class-conditional ---------------------------------------------------------------------------------------------
def test_class_conditional_rows_per_class_and_cycled_labels(saved_pipeline, tmp_path, capsys):
    folder, steps = saved_pipeline("cfg"), ["--num_inference_steps", "1"]
    grid = sample(folder, tmp_path, *steps)  # no --num_images: 64 rounded down to 60, six per class
    assert grid.size == grid_size(60, 6, (8, 8))
    assert "60 images (one row per class label, 6 each)" in capsys.readouterr().out
    grid = sample(folder, tmp_path, "--num_images", "20", *steps)  # default: all 10 classes, one row each
    assert grid.size == grid_size(20, 2, (8, 8))
    assert "note" not in capsys.readouterr().out
    grid = sample(folder, tmp_path, "--num_images", "8", *steps)  # 8 on 10 classes: classes 0..7, said so
    assert grid.size == grid_size(8, 3, (8, 8))
    out = capsys.readouterr().out
    assert "8 images" in out and "0×1, 1×1, 2×1, 3×1, 4×1, 5×1, 6×1, 7×1 (8, 9 not drawn)" in out
    grid = sample(folder, tmp_path, "--num_images", "4", "--class_labels", "3,5", "--guidance_scale", "1", *steps)
    assert grid.size == grid_size(4, 2, (8, 8))


def test_plan_labels_rows_and_the_seeding_of_sample_images(saved_pipeline):
    from custom_pipelines.hub.loader import load_pipeline

    pipe = load_pipeline(saved_pipeline("cfg"))
    pipe.set_progress_bar_config(disable=True)
    args = parse_args(["--pipeline", "x", "--output", "y", "--class_labels", "3,5", "--num_inference_steps", "1"])
    rows = plan_sampling(pipe, args, 4, 64, "num_images", rows_per_condition=True)
    assert rows.per_condition == 2 and rows.labels_of(range(4)) == [3, 3, 5, 5]
    cycled = plan_sampling(pipe, args, 4, 64, "num_images")
    assert cycled.labels_of(range(4)) == [3, 5, 3, 5]
    (images, labels), *_ = sample_batches(pipe, 4, 4, 0, cycled)
    assert labels.tolist() == [3, 5, 3, 5] and images.shape == (4, 1, 8, 8)
    (expected, _), *_ = sample_images(pipe, 4, 4, 0, [3, 5], num_inference_steps=1)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)  # the evaluation's seeding, image for image


# ----- latent diffusion: unconditional, class, text ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "argv", "per_row", "count"),
    [
        ("ldm-none", ["--num_images", "2"], 2, 2),
        ("ldm-class", ["--num_images", "3"], 1, 3),  # 3 classes: one row each
        ("ldm-text", ["--num_images", "4", "--prompt", "a handwritten 3", "a handwritten 7"], 2, 4),
    ],
)
def test_latent_diffusion_of_each_conditioning(saved_pipeline, tmp_path, capsys, kind, argv, per_row, count):
    grid = sample(saved_pipeline(kind), tmp_path, *argv, "--num_inference_steps", "1")
    assert grid.size == grid_size(count, per_row, (16, 16))
    assert f"LatentDiffusionPipeline from {saved_pipeline(kind)}: {count} images" in capsys.readouterr().out


def test_text_pipeline_is_described_by_its_model_not_its_class_name(saved_pipeline):
    from custom_pipelines.hub.loader import load_pipeline

    text = describe_pipeline(load_pipeline(saved_pipeline("ldm-text")))
    assert (text.condition, text.num_classes, text.seeded, text.takes_image) == ("text", None, True, False)
    labels = describe_pipeline(load_pipeline(saved_pipeline("ldm-class")))
    assert (labels.condition, labels.num_classes) == ("class", 3)


# ----- input images: super-resolution, CycleGAN, img2img -------------------------------------------------------------
def test_super_resolution_on_a_folder_gives_input_output_pairs(saved_pipeline, input_images, tmp_path, capsys):
    grid = sample(saved_pipeline("sr"), tmp_path, "--image", str(input_images))
    # 3 inputs (the .txt is skipped) → 3 pairs, one pair per row; tiles at the first output's 16×16
    assert grid.size == grid_size(6, 2, (16, 16))
    assert "SuperResolutionPipeline" in capsys.readouterr().out
    grid = sample(saved_pipeline("sr"), tmp_path, "--image", str(input_images), "--num_images", "2")
    assert grid.size == grid_size(4, 2, (16, 16))
    assert "the first 2 of the 3 input images" in capsys.readouterr().out


def test_cyclegan_output_tile_is_the_pipelines_translation(saved_pipeline, input_images, tmp_path):
    from custom_pipelines.hub.loader import load_pipeline

    image = input_images / "a.png"
    argv = ["--image", str(image), "--direction", "b_to_a", "--torch_dtype", "fp32"]  # auto may pick bf16
    grid = np.asarray(sample(saved_pipeline("cyclegan"), tmp_path, *argv))
    assert grid.shape == grid_size(2, 2, (8, 8))[::-1]
    with Image.open(image) as pil:
        expected = load_pipeline(saved_pipeline("cyclegan"))(pil, direction="b_to_a", output_type="np").images[0]
    output_tile = grid[1:65, 66:130][::8, ::8]  # the right tile of the pair, enlarged 8× (nearest)
    np.testing.assert_allclose(output_tile, expected[..., 0] * 255, atol=0.51)  # 8-bit rounding of the PNG
    input_tile = grid[1:65, 1:65][::8, ::8]
    np.testing.assert_array_equal(input_tile, np.asarray(Image.open(image)))


@pytest.mark.parametrize(
    ("kind", "argv", "runs_as", "tile"),
    [
        ("ddpm", ["--num_images", "3"], "DiffusionImg2ImgPipeline", 8),  # 2 inputs cycled over 3 outputs
        ("img2img", ["--mask_image", "{mask}"], "DiffusionImg2ImgPipeline", 8),
        ("cfg", ["--class_labels", "4"], "DiffusionImg2ImgPipeline", 8),
        ("ldm-text", ["--prompt", "a handwritten 3"], "LatentImg2ImgPipeline", 16),  # inputs resized to 16×16
    ],
)
def test_img2img_with_any_diffusion_pipeline(
    saved_pipeline, input_images, tmp_path, capsys, kind, argv, runs_as, tile
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        (inputs / name).write_bytes((input_images / name).read_bytes())
    mask = tmp_path / "mask.png"
    Image.fromarray(np.tile(np.uint8([0, 255]), (8, 4)), mode="L").save(mask)
    argv = [a.format(mask=mask) for a in argv]
    grid = sample(saved_pipeline(kind), tmp_path, "--image", str(inputs), "--strength", "0.5",
                  "--num_inference_steps", "2", *argv)  # fmt: skip
    count = 3 if "--num_images" in argv else 2
    assert grid.size == grid_size(2 * count, 2, (tile, tile))
    out = capsys.readouterr().out
    assert f"{runs_as} from" in out and f"{count} images (input | output pairs)" in out
