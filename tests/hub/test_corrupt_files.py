"""Broken pipeline folders fail with a ValueError naming the file, before diffusers or torch see them: truncated,
empty or garbage safetensors, invalid JSON, unknown config keys of our classes, a model_index.json naming a class
that does not exist, weights of the wrong shapes, pickled `.bin` weights (refused unless use_safetensors=False)."""

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from custom_pipelines import GANPipeline, UnconditionalDiffusionPipeline, load_pipeline
from custom_pipelines.hub.validate import check_repo_files
from tests.hub.tiny_pipelines import build, sample

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    for kind in ("gan", "ddpm"):
        build(kind).save_pretrained(root / kind)
    return root


@pytest.fixture
def copy(saved, tmp_path):
    def make(kind):
        folder = tmp_path / kind
        shutil.copytree(saved / kind, folder)
        return folder

    return make


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {  # name → (kind, component file, how to break it, what the message must say)
    "truncated weights": ("gan", f"gan_generator/{WEIGHTS}", truncate, "not a complete safetensors file"),
    "empty weights": ("ddpm", f"unet/{WEIGHTS}", lambda p: p.write_bytes(b""), "not a complete safetensors file"),
    "garbage weights": ("gan", f"gan_generator/{WEIGHTS}", lambda p: p.write_bytes(os.urandom(4096)),
                        "not a complete safetensors file"),
    "header cut short": ("ddpm", f"unet/{WEIGHTS}", lambda p: p.write_bytes(p.read_bytes()[:40]),
                         "not a complete safetensors file"),
    "invalid config json": ("gan", "gan_generator/config.json", lambda p: p.write_text("{ not json"),
                            "is not valid JSON"),
    "config not an object": ("ddpm", "scheduler/scheduler_config.json", lambda p: p.write_text("[1, 2]"),
                             "must hold a JSON object"),
    "unknown key of ours": ("gan", "gan_generator/config.json", lambda p: edit_json(p, lambda d: d.update(bogus=3)),
                            "takes no key(s) ['bogus']"),
    "class that does not exist": ("gan", "model_index.json", lambda p: edit_json(
        p, lambda d: d.update(gan_generator=["custom_pipelines.gan.dcgan", "NoGAN"])), "names class 'NoGAN'"),
    "library that does not exist": ("ddpm", "model_index.json",
                                    lambda p: edit_json(p, lambda d: d.update(unet=["custom_pipelines.nope", "X"])),
                                    "cannot be imported"),
    "shapes of another config (ours)": ("gan", "gan_generator/config.json",
                                        lambda p: edit_json(p, lambda d: d.update(base_channels=8)),
                                        "do not match the shapes"),
    "shapes of another config (diffusers')": ("ddpm", "unet/config.json",
                                              lambda p: edit_json(p, lambda d: d.update(in_channels=2)),
                                              "do not match the shapes"),
    "invalid model_index": ("ddpm", "model_index.json", lambda p: p.write_text("nope"), "is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
@pytest.mark.parametrize("entry", ["from_pretrained", "load_pipeline"])
def test_a_broken_file_is_named_in_a_value_error(copy, case, entry):
    kind, relative, breaker, message = CORRUPTIONS[case]
    folder = copy(kind)
    breaker(folder / relative)
    cls = {"gan": GANPipeline, "ddpm": UnconditionalDiffusionPipeline}[kind]
    load = cls.from_pretrained if entry == "from_pretrained" else load_pipeline
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load(folder)
    assert str(folder / relative) in str(info.value)  # the message names the broken file


def test_pickled_weights_are_refused_unless_the_caller_opts_in(copy):
    folder = copy("gan")
    expected = sample(GANPipeline.from_pretrained(folder), "gan")
    weights = folder / "gan_generator" / WEIGHTS
    torch.save(load_file(weights), folder / "gan_generator" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin: pickled weights .* use_safetensors=False"):
        GANPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="pickled weights"):
        load_pipeline(folder)
    pipe = GANPipeline.from_pretrained(folder, use_safetensors=False)  # the explicit opt-in (weights_only load)
    assert (sample(pipe, "gan") == expected).all()


def test_scheduler_configs_keep_the_keys_of_swapped_schedulers(copy):
    """diffusers keeps a swapped-from scheduler's keys in the config (from_config): they must still load."""
    folder = copy("ddpm")
    edit_json(folder / "scheduler" / "scheduler_config.json", lambda d: d.update(solver_order=2))
    assert UnconditionalDiffusionPipeline.from_pretrained(folder).scheduler.config.num_train_timesteps > 0


def test_an_intact_folder_loads_and_samples_as_saved(saved):
    for kind, cls in (("gan", GANPipeline), ("ddpm", UnconditionalDiffusionPipeline)):
        assert (sample(cls.from_pretrained(saved / kind), kind) == sample(build(kind), kind)).all()


def test_a_hub_repo_listing_with_pickles_only_is_refused_before_any_download():
    index = {"_class_name": "GANPipeline", "gan_generator": ["custom_pipelines", "DCGANGenerator"]}
    files = ["model_index.json", "gan_generator/config.json", "gan_generator/diffusion_pytorch_model.bin"]
    with pytest.raises(ValueError, match=r"Hub repo 'u/r': gan_generator/diffusion_pytorch_model\.bin"):
        check_repo_files("u/r", files, index)
    check_repo_files("u/r", files, index, use_safetensors=False)
    check_repo_files("u/r", [*files, "gan_generator/diffusion_pytorch_model.safetensors"], index)
    check_repo_files("u/r", [*files[:2], "training_args.bin"], index)  # not a component: diffusers never loads it


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/b", "..", "unet\\\\..\\\\x"])
def test_a_component_name_that_is_a_path_is_refused(copy, name):
    folder = copy("gan")
    component = ["custom_pipelines.gan.dcgan", "DCGANGenerator"]
    edit_json(folder / "model_index.json", lambda d: d.update({name: component}))
    with pytest.raises(ValueError, match="is not a plain folder name"):
        GANPipeline.from_pretrained(folder)
