"""The app of every pipeline type, launched in this process and called with `gradio_client` as a browser or a script
would: the images have the right size, the seed used comes back, and the "as Python" code, run as written,
reproduces the same pixels. Bad input answers with our pipelines' message and the server keeps serving; two users
at the same time get their own results."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.app.conftest import LIMITS, gallery_arrays, run_snippet


def check_reproduced(result, tmp_path, inputs=None, size=None, count=None):
    gallery, seed, code, files = result
    images = gallery_arrays(gallery)
    if size is not None:
        assert all(image.shape[:2] == size for image in images), [image.shape for image in images]
    if count is not None:
        assert len(images) == count
    uploaded = {name: path for name, path in (inputs or {}).items()}
    for path in files or []:  # the app hands back the exact inputs its call got (input.png, mask.png)
        uploaded[path.rsplit("/", 1)[1]] = path
    reproduced = run_snippet(code, tmp_path, uploaded)
    assert len(reproduced) == len(images)
    for ours, theirs in zip(images, reproduced):
        np.testing.assert_array_equal(ours, theirs)
    return images, seed, code


# ----- one test per pipeline type ------------------------------------------------------------------------------------
def test_unconditional_diffusion(launched, tmp_path):
    client = launched("ddpm").client()
    result = client.predict(
        seed=7, num_images=3, eta=0.5, num_inference_steps=3, scheduler="ddim", api_name="/generate"
    )
    images, seed, code = check_reproduced(result, tmp_path, size=(8, 8), count=3)
    assert seed == 7
    assert "scheduler_from_name('ddim'" in code and "eta=0.5" in code
    assert len({image.tobytes() for image in images}) == 3  # each image its own noise
    again = client.predict(
        seed=7, num_images=1, num_inference_steps=3, scheduler="ddim", eta=0.5, api_name="/generate"
    )
    np.testing.assert_array_equal(gallery_arrays(again[0])[0], images[0])  # image i does not depend on the count
    other = client.predict(seed=8, num_images=1, num_inference_steps=3, scheduler="ddim", api_name="/generate")
    assert not np.array_equal(gallery_arrays(other[0])[0], images[0])


def test_randomized_seed_is_reported_and_reproduces(launched, tmp_path):
    client = launched("ddpm").client()
    result = client.predict(seed=0, randomize_seed=True, num_images=1, num_inference_steps=2, api_name="/generate")
    _, seed, _ = check_reproduced(result, tmp_path, count=1)
    assert isinstance(seed, int) and seed >= 0
    fixed = client.predict(seed=seed, num_images=1, num_inference_steps=2, api_name="/generate")
    np.testing.assert_array_equal(gallery_arrays(fixed[0])[0], gallery_arrays(result[0])[0])


def test_diffusers_scheduler_by_name(launched, tmp_path):
    client = launched("ddpm").client()
    result = client.predict(
        seed=1, num_images=2, num_inference_steps=3, scheduler="EulerDiscreteScheduler", api_name="/generate"
    )
    _, _, code = check_reproduced(result, tmp_path, size=(8, 8), count=2)
    assert "EulerDiscreteScheduler.from_config(pipe.scheduler.config)" in code


@pytest.mark.parametrize("class_label", ["3", "digit 5"])
def test_class_conditional_by_id_or_name(launched, tmp_path, class_label):
    client = launched("cfg").client()
    result = client.predict(
        seed=2, num_images=2, num_inference_steps=2, class_label=class_label, guidance_scale=3.0, api_name="/generate"
    )
    _, seed, code = check_reproduced(result, tmp_path, size=(8, 8), count=2)
    assert seed == 2 and "guidance_scale=3.0" in code
    label = int(class_label) if class_label.isdigit() else class_label
    assert f"class_labels=[{label!r}] * 2" in code


def test_class_names_come_from_id2label(launched):
    info = launched("cfg").client().view_api(return_format="dict", print_info=False)
    parameters = {p["parameter_name"]: p for p in info["named_endpoints"]["/generate"]["parameters"]}
    assert parameters["class_label"]["parameter_default"] == "0"
    assert "guidance_scale" in parameters and "prompt" not in parameters


def test_text_latent_diffusion(launched, tmp_path):
    client = launched("ldm-text").client()
    result = client.predict(
        seed=3,
        num_images=2,
        num_inference_steps=2,
        prompt="a handwritten 7",
        negative_prompt="blurry",
        guidance_scale=2.5,
        height=24,
        width=16,
        api_name="/generate",
    )
    _, _, code = check_reproduced(result, tmp_path, size=(24, 16), count=2)
    assert "num_images_per_prompt=2" in code and "negative_prompt='blurry'" in code


def test_img2img_with_a_drawn_mask(launched, upload_files, tmp_path):
    client = launched("img2img").client()
    editor = {
        "background": handle_file(str(upload_files["gray"])),
        "layers": [handle_file(str(upload_files["stroke"]))],
        "composite": None,
        "id": None,
    }
    result = client.predict(
        image=editor, seed=4, num_images=2, strength=0.5, num_inference_steps=4, api_name="/img2img"
    )
    images, _, code = check_reproduced(result, tmp_path, size=(8, 8), count=2)
    assert "mask_image" in code and sorted(p.rsplit("/", 1)[1] for p in result[3]) == ["input.png", "mask.png"]
    gray = np.asarray(Image.open(upload_files["gray"]))
    outside = np.ones((8, 8), dtype=bool)
    outside[2:6, 2:6] = False
    for image in images:  # inpainting keeps the unpainted region exactly
        np.testing.assert_array_equal(image[outside], gray[outside])
        assert not np.array_equal(image[~outside], gray[~outside])


def test_img2img_page_of_an_unconditional_model(launched, upload_files, tmp_path):
    client = launched("ddpm").client()
    editor = {"background": handle_file(str(upload_files["rgb"])), "layers": [], "composite": None, "id": None}
    result = client.predict(
        image=editor, seed=5, num_images=1, strength=0.6, num_inference_steps=3, api_name="/img2img"
    )
    _, _, code = check_reproduced(result, tmp_path, size=(8, 8), count=1)  # resized to the model's 8×8
    assert "with_image_input(UnconditionalDiffusionPipeline.from_pretrained(" in code and "mask_image" not in code


def test_super_resolution_beside_bicubic_and_tiled(launched, upload_files, tmp_path):
    client = launched("sr").client()
    whole = client.predict(image=handle_file(str(upload_files["rgb"])), tile_size=0, api_name="/upscale")
    gallery, seed, code, _ = whole
    assert seed is None and [item["caption"] for item in gallery] == ["bicubic", "SuperResolutionPipeline"]
    bicubic, upscaled = gallery_arrays(gallery)
    assert bicubic.shape == upscaled.shape == (64, 64, 3)
    reproduced = run_snippet(code, tmp_path, {"input.png": whole[3][0]})
    np.testing.assert_array_equal(reproduced[0], upscaled)
    tiled = client.predict(image=handle_file(str(upload_files["rgb"])), tile_size=16, api_name="/upscale")
    assert "tile_size=16" in tiled[2]
    np.testing.assert_allclose(gallery_arrays(tiled[0])[1], upscaled, atol=1)  # tiles with the receptive overlap


@pytest.mark.parametrize("direction", ["a_to_b", "b_to_a"])
def test_cyclegan_direction(launched, upload_files, tmp_path, direction):
    client = launched("cyclegan").client()
    result = client.predict(image=handle_file(str(upload_files["gray"])), direction=direction, api_name="/translate")
    images, seed, code = check_reproduced(result, tmp_path, size=(8, 8), count=1)
    assert seed is None and f"direction={direction!r}" in code


def test_stylegan_sample_mix_and_interpolation(launched, tmp_path):
    client = launched("stylegan").client()
    sample = client.predict(seed=9, num_images=2, truncation_psi=0.5, api_name="/sample")
    (tmp_path / "sample").mkdir()
    check_reproduced(sample, tmp_path / "sample", size=(8, 8), count=2)
    mix = client.predict(seeds_a="1, 2", seeds_b="3, 4, 5", crossover="2", truncation_psi=0.7, api_name="/style_mix")
    (tmp_path / "mix").mkdir()
    grid, _, code = check_reproduced(mix, tmp_path / "mix", count=1)
    assert grid[0].shape[:2] == (3 * 8, 4 * 8) and "pipe.style_mix(" in code  # (1 + rows) × (1 + columns) cells
    strip = client.predict(seed_a=1, seed_b=2, steps=5, truncation_psi=0.7, api_name="/interpolate")
    (tmp_path / "strip").mkdir()
    images, _, _ = check_reproduced(strip, tmp_path / "strip", size=(8, 8), count=5)
    other_end = client.predict(seed_a=1, seed_b=3, steps=2, truncation_psi=0.7, api_name="/interpolate")
    np.testing.assert_array_equal(images[0], gallery_arrays(other_end[0])[0])  # the strip starts at seed_a's image


def test_gan_sample(launched, tmp_path):
    client = launched("gan").client()
    result = client.predict(seed=11, num_images=4, api_name="/sample")
    images, seed, _ = check_reproduced(result, tmp_path, size=(8, 8), count=4)
    assert seed == 11 and images[0].std() > 0


# ----- bad input: our message in the page, and the server goes on ----------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "kwargs", "api_name", "message"),
    [
        ("ddpm", {"num_inference_steps": 0}, "/generate", "num_inference_steps must be a positive integer, got 0"),
        (
            "ddpm",
            {"num_inference_steps": 61},
            "/generate",
            "num_inference_steps must be in [1, 60] (the app's --max_steps)",
        ),
        ("ddpm", {"num_images": 5}, "/generate", "num_images must be in [1, 4] (the app's --max_images), got 5"),
        (
            "ddpm",
            {"scheduler": "nope"},
            "/generate",
            "Value: nope is not in the list of choices",
        ),  # Gradio's own check
        ("cfg", {"class_label": "42"}, "/generate", "class_labels ids must be in [0, 9], got 42"),
        ("cfg", {"class_label": "zebra"}, "/generate", "zebra"),
        ("ldm-text", {"prompt": "  "}, "/generate", "prompt must be a non-empty string"),
        ("ddpm", {"eta": 1.0, "strength": 0.05}, "/img2img", "leaves int(steps × strength) = 0"),
        ("sr", {"image": "huge"}, "/upscale", "is 10000×10000 = 100,000,000 pixels, more than the app's limit"),
        ("sr", {"image": "text"}, "/upscale", "image: cannot read notes.png as an image"),
        ("cyclegan", {"image": "text"}, "/translate", "image: cannot read notes.png as an image"),
        ("stylegan", {"seeds_a": "1, x"}, "/style_mix", "seeds_a must be integers separated by commas"),
    ],
)
def test_bad_input_answers_with_the_message_and_the_server_keeps_serving(
    launched, upload_files, kind, kwargs, api_name, message
):
    client = launched(kind).client()
    kwargs = dict(kwargs)
    if api_name == "/img2img":
        kwargs.pop("eta")
        editor = {"background": handle_file(str(upload_files["gray"])), "layers": [], "composite": None, "id": None}
        kwargs.update(image=editor, num_inference_steps=2)
    elif "image" in kwargs:
        kwargs["image"] = handle_file(str(upload_files[kwargs["image"]]))
    elif api_name == "/generate":
        kwargs.setdefault("num_inference_steps", 2)
    with pytest.raises(AppError) as error:
        client.predict(**kwargs, api_name=api_name)
    assert message in str(error.value)
    assert "Traceback" not in str(error.value)
    good = {
        "ddpm": "/generate",
        "cfg": "/generate",
        "ldm-text": "/generate",
        "sr": "/upscale",
        "cyclegan": "/translate",
    }
    if kind in ("sr", "cyclegan"):
        assert client.predict(image=handle_file(str(upload_files["gray"])), api_name=good[kind])[0]
    elif kind == "stylegan":
        assert client.predict(seed=0, num_images=1, api_name="/sample")[0]
    else:
        assert client.predict(seed=0, num_images=1, num_inference_steps=2, api_name=good[kind])[0]


def test_limits_are_shown_in_the_page(launched):
    import httpx

    page = httpx.get(launched("ddpm").url + "config", timeout=30).text
    assert "at most 4 images, 60 steps, uploads up to 2 MB and 65,536 pixels; 8 requests may wait" in page
    gan_page = httpx.get(launched("gan").url + "config", timeout=30).text  # no steps, no uploads there
    assert "Limits per request: at most 4 images; 8 requests may wait." in gan_page


# ----- two users at once ---------------------------------------------------------------------------------------------
def test_two_users_at_the_same_time_get_their_own_results(launched):
    app = launched("ddpm")  # concurrency 2: both run at once on the one loaded model
    first, second = app.client(), app.client()
    jobs = [
        first.submit(seed=21, num_images=2, num_inference_steps=20, scheduler="ddpm", api_name="/generate"),
        second.submit(seed=22, num_images=2, num_inference_steps=20, scheduler="ddim", api_name="/generate"),
    ]
    results = [job.result(timeout=120) for job in jobs]
    assert [r[1] for r in results] == [21, 22]
    alone = [
        first.predict(seed=21, num_images=2, num_inference_steps=20, scheduler="ddpm", api_name="/generate"),
        second.predict(seed=22, num_images=2, num_inference_steps=20, scheduler="ddim", api_name="/generate"),
    ]
    for together, single in zip(results, alone):
        for a, b in zip(gallery_arrays(together[0]), gallery_arrays(single[0])):
            np.testing.assert_array_equal(a, b)
    assert LIMITS.concurrency == 2


def test_uploads_past_the_byte_limit_are_refused(launched, tmp_path):
    big = tmp_path / "big.png"  # random pixels do not compress: ~2.9 MB, past the 2 MB limit
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(big)
    client = launched("sr").client()
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # Gradio's upload check (max_file_size)
        client.predict(image=handle_file(str(big)), api_name="/upscale")
    # and our own check, for a file that reaches the app by another way
    with pytest.raises(ValueError, match=r"image: big.png is 2.\d MB, more than the app's limit of 2 MB"):
        LIMITS.open_upload(big)


def test_a_distilled_student_starts_with_few_steps(tmp_path):
    """A consistency-distilled student (its teacher's class with diffusers' LCMScheduler) gets 4 steps by default, its
    own scheduler only, and the steps capped at its distillation grid."""
    from diffusers import LCMScheduler

    from custom_pipelines import UnconditionalDiffusionPipeline
    from custom_pipelines.app import AppModel, build_app
    from tests.utils import scheduler_config, tiny_unet

    config = {k: v for k, v in scheduler_config().items() if k in LCMScheduler.__init__.__code__.co_varnames}
    scheduler = LCMScheduler.from_config({**config, "original_inference_steps": 10})
    UnconditionalDiffusionPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(tmp_path / "student")
    model = AppModel(str(tmp_path / "student"), LIMITS)
    assert model.is_distilled and model.default_steps == 4 and model.max_model_steps == 10
    assert model.scheduler_names == ["default"]
    with pytest.raises(ValueError, match=r"scheduler must be one of \['default'\], got 'ddim'"):
        model.generate(seed=0, num_inference_steps=2, scheduler="ddim")
    demo = build_app(model, LIMITS)
    numbers = {c.label: c for c in demo.blocks.values() if getattr(c, "label", None) in ("Steps",)}
    assert numbers["Steps"].value == 4 and numbers["Steps"].info == "1 to 10"
    result = model.generate(seed=3, num_images=2, num_inference_steps=4)
    assert [image.size for image in result.images] == [(8, 8)] * 2
    reproduced = run_snippet(result.code, tmp_path)
    for ours, theirs in zip(result.images, reproduced):
        np.testing.assert_array_equal(np.asarray(ours), theirs)
