"""`--lora_rank` on the training scripts: a base trained on digits 0–4, a LoRA on 5–9. Only the adapter trains (the
base stays bit-identical), checkpoints and the output hold the adapter alone, the adapter folder loads onto the base
and reproduces the run's own validation grid; kill → resume is bit-identical; two processes; bad flags raise."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from custom_pipelines.lora import LORA_WEIGHT_NAME, adapters
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.training.reporting import image_grid
from tests.training.test_finetune import reset_accelerate, tiny_args, train_digit_bases
from training import train_cfg, train_ddpm


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A DDPM and a CFG model trained (briefly) on digits 0–4: the bases the adapters are trained on."""
    return train_digit_bases(tmp_path_factory.mktemp("bases"))


def lora_args(out, base, config="ddpm-tiny-8", *extra):
    return tiny_args(out, config, range(5, 10), "--pretrained_model_name_or_path", str(base), "--lora_rank", "4",
                     "--learning_rate", "1e-2", *extra)  # fmt: skip


def test_only_the_adapter_trains_and_the_folder_reproduces_the_run(bases, tmp_path, monkeypatch):
    seen = {}

    def recording_apply_lora(model, args):
        seen["unet"] = train_ddpm.apply_lora.__wrapped__(model, args)
        return seen["unet"]

    recording_apply_lora.__wrapped__ = train_ddpm.apply_lora
    monkeypatch.setattr(train_ddpm, "apply_lora", recording_apply_lora)
    out = tmp_path / "lora"
    reset_accelerate()
    train_ddpm.main(train_ddpm.parse_args(lora_args(out, bases / "ddpm", "ddpm-tiny-8", "--checkpointing_steps", "2")))

    # the base weights inside the trained model are the base's file, bit for bit; the adapter moved
    base_file = load_file(bases / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors")
    trained = {k.replace(".base_layer.", "."): v for k, v in seen["unet"].state_dict().items() if ".lora_" not in k}
    assert trained.keys() == base_file.keys()
    assert all(torch.equal(trained[k], base_file[k]) for k in base_file)
    trainable = [n for n, p in seen["unet"].named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)

    # an adapter folder, not a pipeline; checkpoints hold the adapter (+ its EMA and optimizer state) alone
    names = set(os.listdir(out))
    assert LORA_WEIGHT_NAME in names and "README.md" in names
    assert not names & {"model_index.json", "unet", "scheduler"}
    checkpoint = set(os.listdir(out / "checkpoint-2"))
    assert "lora_unet.safetensors" in checkpoint and not any(n.startswith("model") for n in checkpoint)
    assert set(load_file(out / "checkpoint-2" / "lora_unet.safetensors")) == set(trainable)
    assert len(load_file(out / "checkpoint-2" / "ema" / "unet.safetensors")) == len(trainable)
    adapter_bytes = os.path.getsize(out / LORA_WEIGHT_NAME)
    assert adapter_bytes < os.path.getsize(bases / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors")

    card = (out / "README.md").read_text()
    assert "- lora" in card and "load_lora_weights" in card and str(bases / "ddpm") in card

    # base + adapter reproduce the run's last validation grid (EMA adapter, same seed, same steps)
    pipe = UnconditionalDiffusionPipeline.from_pretrained(bases / "ddpm")
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    base_images = pipe(batch_size=2, num_inference_steps=1, generator=generator, output_type="pt").images
    pipe.load_lora_weights(out, adapter_name="digits59")
    images = pipe(batch_size=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    grid = np.asarray(image_grid(images.images))
    np.testing.assert_array_equal(grid, np.asarray(Image.open(out / "samples" / "step_000003.png")))
    assert not torch.equal(images.images, base_images)


def test_cfg_lora_loads_onto_its_base_and_not_onto_another(bases, tmp_path):
    out = tmp_path / "cfg-lora"
    reset_accelerate()
    train_cfg.main(train_cfg.parse_args(lora_args(out, bases / "cfg", "cfg-tiny-8", "--lora_rank", "2")))
    tensors = load_file(out / LORA_WEIGHT_NAME)
    assert tensors and all(k.startswith("unet.") for k in tensors)
    assert {v.shape[0] for k, v in tensors.items() if ".lora_A." in k} == {2}  # the last --lora_rank wins
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(bases / "cfg")
    pipe.load_lora_weights(out)
    assert pipe.get_list_adapters() == {"unet": ["default_0"]}
    other = UnconditionalDiffusionPipeline.from_pretrained(bases / "ddpm")
    with pytest.raises(ValueError, match=rf"trained for UNet2DModel of {bases / 'cfg'}.*not for UNet2DModel of"):
        other.load_lora_weights(out)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora_rank", "0"], "--lora_rank must be an integer >= 1, got 0"),
        (["--lora_rank", "-2"], "--lora_rank must be an integer >= 1, got -2"),
        (["--lora_rank", "4", "--lora_alpha", "0"], "--lora_alpha must be > 0"),
        (["--lora_rank", "4", "--lora_dropout", "1"], r"--lora_dropout must be in \[0, 1\)"),
        (["--lora_alpha", "4"], "--lora_alpha needs --lora_rank"),
    ],
)
def test_bad_lora_flags_raise(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_ddpm.parse_args(tiny_args(tmp_path, "ddpm-tiny-8", range(5), "--pretrained_model_name_or_path", "x",
                                        *extra))  # fmt: skip


def test_lora_needs_a_base_and_known_targets(bases, tmp_path):
    with pytest.raises(ValueError, match="--lora_rank needs --pretrained_model_name_or_path"):
        train_cfg.parse_args(tiny_args(tmp_path, "cfg-tiny-8", range(5), "--lora_rank", "4"))
    reset_accelerate()
    args = train_ddpm.parse_args(lora_args(tmp_path / "t", bases / "ddpm", "ddpm-tiny-8",
                                           "--lora_target_modules", "to_q", "attn_qkv"))  # fmt: skip
    with pytest.raises(ValueError, match="unknown LoRA target module 'attn_qkv'"):
        train_ddpm.main(args)


def test_text_ldm_lora_trains_and_loads(tmp_path):
    """train_ldm.py --lora_rank on a tiny text model (UNet2DConditionModel): the adapter loads onto the base."""
    from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
    from tests.training.test_train_ldm import tiny_args as ldm_args
    from training import train_ldm

    vae, configs = ldm_fixtures(tmp_path)
    base, out = tmp_path / "base", tmp_path / "lora"
    reset_accelerate()
    train_ldm.main(train_ldm.parse_args(ldm_args(vae, configs, base, "text", "--max_train_steps", "2")))
    reset_accelerate()
    flags = ["--max_train_steps", "2", "--pretrained_model_name_or_path", str(base), "--lora_rank", "4",
             "--lora_target_modules", "to_q", "to_k", "to_v", "to_out.0", "--learning_rate", "1e-2"]  # fmt: skip
    train_ldm.main(train_ldm.parse_args(ldm_args(vae, configs, out, "text", *flags)))
    keys = load_file(out / LORA_WEIGHT_NAME)
    assert keys and {k.split(".")[-3] for k in keys} == {"to_q", "to_k", "to_v", "0"}
    pipe = LatentDiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(out, adapter_name="t")
    assert len(adapters.lora_layers(pipe.unet)) == sum(1 for k in keys if ".lora_A." in k)


def ldm_fixtures(tmp_path):
    """tests/training/test_train_ldm.py's tiny VAE folder and UNet configs, built here (its fixtures are
    module-scoped there)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, load_component_config
    from tests.training.test_train_ldm import NARROW

    vae = tmp_path / "vae"
    torch.manual_seed(0)
    config = {**load_component_config("ldm-digits-32", "vae"), "block_out_channels": [8, 16, 16], "norm_num_groups": 4}
    AutoencoderKL.from_config({**config, "sample_size": 16, "scaling_factor": 0.8}).save_pretrained(vae)
    root = tmp_path / "configs"
    for variant, cls in (("ldm-text-digits-32", UNet2DConditionModel),):
        folder = root / variant
        (folder / "scheduler").mkdir(parents=True)
        (folder / "model_index.json").write_text((HUB_CONFIGS_DIR / variant / "model_index.json").read_text())
        scheduler = HUB_CONFIGS_DIR / variant / "scheduler" / "scheduler_config.json"
        (folder / "scheduler" / "scheduler_config.json").write_text(scheduler.read_text())
        cls.from_config({**load_component_config(variant, "unet"), **NARROW}).save_config(folder / "unet")
    del UNet2DModel
    return vae, root


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(bases, tmp_path):
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return lora_args(out, bases / "ddpm", "ddpm-tiny-8", "--max_train_steps", "6", "--checkpointing_steps", "2")

    files = [LORA_WEIGHT_NAME]
    assert check_kill_points("train_ddpm.py", args_for, tmp_path, files, marker=LORA_WEIGHT_NAME) == 3


@pytest.mark.slow
def test_two_processes_train_one_adapter(bases, tmp_path):
    from tests.training.processes import launch_two_processes

    out = tmp_path / "ddp"
    summary = launch_two_processes("train_cfg.py", lora_args(out, bases / "cfg", "cfg-tiny-8", "--max_train_steps",
                                                             "4", "--checkpointing_steps", "2"))  # fmt: skip
    ranks = summary["param_checksums"]["unet"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept the two ranks' adapters identical
    summary = launch_two_processes("train_cfg.py", lora_args(out, bases / "cfg", "cfg-tiny-8", "--max_train_steps",
                                                             "6", "--resume_from_checkpoint", "latest"))  # fmt: skip
    resumed = summary["param_checksums"]["unet"]
    assert summary["global_step"] == 6 and resumed[0] == resumed[1] and resumed != ranks
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["world_size"] == 2
    ClassConditionalDiffusionPipeline.from_pretrained(bases / "cfg").load_lora_weights(out)


def test_push_to_hub_pushes_the_adapter_only_and_a_pull_gives_the_same_images(
    bases, test_hub, use_hub, tmp_path, fresh_accelerate_state
):
    from huggingface_hub import HfApi, ModelCard

    use_hub(test_hub)
    UnconditionalDiffusionPipeline.from_pretrained(bases / "ddpm").push_to_hub("user/lora-base")
    out = tmp_path / "pushed"
    args = lora_args(out, "user/lora-base", "ddpm-tiny-8", "--push_to_hub", "--hub_model_id", "user/tiny-lora")
    train_ddpm.main(train_ddpm.parse_args(args))

    files = set(HfApi().list_repo_files("user/tiny-lora"))
    assert files == {".gitattributes", LORA_WEIGHT_NAME, "README.md", "loss_curve.png", "samples/step_000003.png"}
    card = ModelCard.load("user/tiny-lora")
    assert card.data.base_model == "user/lora-base" and card.data.base_model_relation == "adapter"
    assert {"lora", "diffusers-training", "ddpm"} <= set(card.data.tags)
    assert "pipe.load_lora_weights('user/tiny-lora'" in card.text

    def images(adapter):
        pipe = UnconditionalDiffusionPipeline.from_pretrained("user/lora-base")
        pipe.load_lora_weights(adapter)
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images

    pulled, local = images("user/tiny-lora"), images(out)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(pulled, local))
