import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from custom_pipelines.training.reporting import (
    ModelCardInfo,
    append_metrics,
    image_grid,
    plot_loss_curve,
    read_metrics,
    write_model_card,
)


def test_image_grid_layout_and_upscaling():
    images = torch.zeros(5, 1, 16, 16)
    images[2] = 1.0
    grid = image_grid(images)  # 16 px tiles are enlarged ×4 to 64 px; 3×2 tiles with 1 px separators
    assert grid.mode == "L" and grid.size == (3 * 65 + 1, 2 * 65 + 1)
    array = np.asarray(grid)
    assert array[1:65, 2 * 65 + 1 : 3 * 65].min() == 255 and array[1:65, 1:65].max() == 0
    rgb = image_grid(torch.rand(4, 3, 128, 128))
    assert rgb.mode == "RGB" and rgb.size == (2 * 129 + 1, 2 * 129 + 1)
    with pytest.raises(ValueError, match="images must be"):
        image_grid(torch.rand(2, 2, 8, 8))


def test_loss_curve_and_model_card(tmp_path):
    for step in range(1, 41):
        append_metrics(str(tmp_path), step, {"loss": 1.0 / step, "lr": 1e-4})
    assert [r["step"] for r in read_metrics(str(tmp_path))] == list(range(1, 41))
    path = plot_loss_curve(str(tmp_path))
    assert Image.open(path).size[0] > 300
    args = argparse.Namespace(dataset_name="digits", hub_model_id=None, hub_token="secret", learning_rate=1e-4)
    info = ModelCardInfo(
        "ddpm", "UnconditionalDiffusionPipeline", "A test.", "/x/training/train_ddpm.py", {"batch_size": 4}
    )
    card = open(write_model_card(str(tmp_path), info, args)).read()
    assert card.startswith("---") and "library_name: diffusers" in card and "A test." in card
    assert "secret" not in card  # the hub token never lands in the card
    assert "pipe(batch_size=4, generator=generator)" in card
    assert "accelerate launch training/train_ddpm.py" in card and "-m custom_pipelines.scripts.train_ddpm" in card


def test_card_snippet_without_a_script_or_call_kwargs():
    info = ModelCardInfo("gan", "GANPipeline")
    assert "images = pipe(generator=generator).images" in info.usage_snippet("user/repo")
    assert "from_pretrained('user/repo')" in info.usage_snippet("user/repo")
    assert info.training_command() == "Trained with `custom_pipelines`."


def test_card_snippet_with_an_input_image_and_no_generator():
    from custom_pipelines.training.reporting import Code

    setup = 'from PIL import Image\nimage = Image.new("RGB", (16, 16))'
    info = ModelCardInfo(
        "srgan",
        "SuperResolutionPipeline",
        example_call_kwargs={"image": Code("image")},
        example_setup=setup,
        uses_generator=False,
    )
    snippet = info.usage_snippet("user/repo")
    assert "images = pipe(image=image).images" in snippet
    assert 'image = Image.new("RGB", (16, 16))\nimages = pipe(' in snippet
    assert "generator" not in snippet and "import torch" not in snippet
    compile(snippet, "snippet", "exec")  # valid Python
