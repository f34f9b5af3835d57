"""Loading by Hub repo id, served from a local Hub cache (HF_HUB_OFFLINE=1: the real resolution code, no network)."""

import shutil

import numpy as np
import pytest
import torch

from custom_pipelines import DDPMAncestralScheduler, UnconditionalDiffusionPipeline, load_pipeline
from custom_pipelines.hub.configs import load_component_config, resolve_variant
from custom_pipelines.training import reporting
from tests.utils import scheduler_config, tiny_unet

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(folder, cache_dir, repo_id="acme/tiny-ddpm"):
    """Lay `folder` out as huggingface_hub's cache would after a download of `repo_id` at main."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo_id


@pytest.fixture
def saved_pipeline(tmp_path):
    pipe = UnconditionalDiffusionPipeline(
        unet=tiny_unet(), scheduler=DDPMAncestralScheduler.from_config(scheduler_config())
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "saved")
    return pipe, tmp_path / "saved"


def sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


def test_load_pipeline_from_folder_dispatches_to_our_class(saved_pipeline):
    pipe, folder = saved_pipeline
    loaded = load_pipeline(folder)
    assert type(loaded) is UnconditionalDiffusionPipeline
    np.testing.assert_array_equal(sample(pipe), sample(loaded))


def test_load_pipeline_by_repo_id_from_hub_cache(saved_pipeline, tmp_path):
    pipe, folder = saved_pipeline
    repo_id = cache_repo(folder, tmp_path / "hub")
    loaded = load_pipeline(repo_id, cache_dir=tmp_path / "hub")
    np.testing.assert_array_equal(sample(pipe), sample(loaded))
    same = UnconditionalDiffusionPipeline.from_pretrained(repo_id, cache_dir=tmp_path / "hub")
    np.testing.assert_array_equal(sample(pipe), sample(same))


def test_model_config_by_repo_id_from_hub_cache(tmp_path):
    repo_id = cache_repo(resolve_variant("ddpm-tiny-8"), tmp_path / "hub", "acme/ddpm-tiny-config")
    config = load_component_config(repo_id, "unet", cache_dir=tmp_path / "hub")
    assert config["_class_name"] == "UNet2DModel" and config["sample_size"] == 8


def test_unknown_class_and_missing_index(tmp_path, saved_pipeline):
    _, folder = saved_pipeline
    with pytest.raises(ValueError, match="without a model_index.json"):
        load_pipeline(tmp_path)
    with pytest.raises(ValueError, match="neither a local pipeline folder nor a Hub repo id"):
        load_pipeline(tmp_path / "no" / "such" / "run")
    with pytest.raises(ValueError, match="neither a local pipeline folder nor a Hub repo id"):
        load_pipeline("acme/not-in-the-cache", cache_dir=tmp_path / "empty-cache")
    index = folder / "model_index.json"
    index.write_text(index.read_text().replace("UnconditionalDiffusionPipeline", "NoSuchPipeline"))
    with pytest.raises(ValueError, match="NoSuchPipeline"):
        load_pipeline(folder)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="not a folder, a variant in hub_configs"):
        resolve_variant("acme/no-such-config-repo")


def test_push_uploads_the_pipeline_not_checkpoints(saved_pipeline, test_hub, use_hub):
    """The training scripts' push (reporting.push_folder_to_hub) against the test hub: one commit with the pipeline
    and its shims, without checkpoints, logs or atomic-write leftovers."""
    from huggingface_hub import HfApi

    _, folder = saved_pipeline
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "optimizer.bin").write_bytes(b"state")
    (folder / "logs").mkdir()
    (folder / "logs" / "events").write_text("tensorboard")
    (folder / ".tmp-README.md-x.md").write_text("half written")
    use_hub(test_hub)
    url = reporting.push_folder_to_hub(str(folder), "me/ddpm", token="tok", private=True)
    assert url.startswith(f"{test_hub.endpoint}/me/ddpm/commit/")
    files = set(HfApi().list_repo_files("me/ddpm"))
    assert {"model_index.json", "pipeline.py", "unet/diffusion_pytorch_model.safetensors"} <= files
    assert not any(f.startswith(("checkpoint-", "logs/", ".tmp-")) for f in files)
