"""`--push_to_hub --hub_model_id` of a training script, end to end on a tiny run, against the test hub."""

import numpy as np
from huggingface_hub import HfApi, ModelCard

from custom_pipelines import UnconditionalDiffusionPipeline, load_pipeline
from custom_pipelines.hub.shims import code_files
from tests.hub.tiny_pipelines import sample
from training import train_ddpm

TINY_FLAGS = [
    "--dataset_name", "digits", "--model_config", "ddpm-tiny-8", "--resolution", "8", "--train_batch_size", "8",
    "--max_train_samples", "32", "--max_train_steps", "3", "--validation_steps", "3", "--num_validation_images", "4",
    "--num_inference_steps", "2", "--checkpointing_steps", "3", "--lr_warmup_steps", "0", "--seed", "0",
]  # fmt: skip


def test_train_ddpm_push_to_hub(test_hub, use_hub, tmp_path, fresh_accelerate_state):
    use_hub(test_hub)
    out = tmp_path / "run"
    push = ["--push_to_hub", "--hub_model_id", "user/tiny"]
    train_ddpm.main(train_ddpm.parse_args([*TINY_FLAGS, "--output_dir", str(out), *push]))

    files = set(HfApi().list_repo_files("user/tiny"))
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= files
    assert set(code_files(out)) <= files and "pipeline.py" in files  # the shims went up with the weights
    assert "samples/step_000003.png" in files and "README.md" in files
    assert not any(f.startswith(("checkpoint-", "logs/")) or "/.tmp-" in f for f in files)

    card = ModelCard.load("user/tiny")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.datasets == ["digits"] and card.data.license == "apache-2.0" and "ddpm" in card.data.tags
    assert card.data.base_model is None  # trained from scratch
    assert "![samples](samples/step_000003.png)" in card.text  # the grid, shown by the Hub from the repo

    pulled = load_pipeline("user/tiny")
    assert type(pulled) is UnconditionalDiffusionPipeline
    local = UnconditionalDiffusionPipeline.from_pretrained(out)
    np.testing.assert_array_equal(sample(pulled, "ddpm"), sample(local, "ddpm"))


def test_push_checks_pass_against_a_reachable_hub_and_a_saved_run_pushes_later(
    test_hub, use_hub, tmp_path, fresh_accelerate_state
):
    from custom_pipelines.hub.push import main as push_main
    from custom_pipelines.hub.push import push_preflight_error

    use_hub(test_hub)
    assert push_preflight_error("user/later", None) is None  # online, a token (HF_TOKEN), whoami answers
    out = tmp_path / "run"
    train_ddpm.main(train_ddpm.parse_args([*TINY_FLAGS, "--output_dir", str(out)]))  # trained without a push
    push_main([str(out), "user/later"])  # what a failed --push_to_hub tells the user to run
    files = set(HfApi().list_repo_files("user/later"))
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "pipeline.py", "README.md"} <= files
    assert not any(f.startswith(("checkpoint-", "logs/")) for f in files)
    np.testing.assert_array_equal(sample(load_pipeline("user/later"), "ddpm"), sample(load_pipeline(str(out)), "ddpm"))


def test_the_push_command_refuses_a_folder_that_is_not_a_pipeline(tmp_path):
    import pytest

    from custom_pipelines.hub.push import main as push_main

    with pytest.raises(ValueError, match="holds no model_index.json"):
        push_main([str(tmp_path), "user/x"])
