"""`save_pretrained` never leaves a half-written pipeline: it stages the save and moves it into place with
model_index.json last; a failure mid-save keeps the old pipeline whole and loadable."""

import os

import pytest
import torch

from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from tests.pipelines.test_pipeline_runtime import make_unconditional_pipe


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def test_save_replaces_components_whole_and_keeps_other_files(tmp_path):
    pipe = make_unconditional_pipe()
    pipe.save_pretrained(tmp_path)
    (tmp_path / "unet" / "stale.safetensors").write_bytes(b"old")
    (tmp_path / "checkpoint-3").mkdir()  # a training run's own files stay
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(1.0)
    pipe.save_pretrained(tmp_path)
    assert not (tmp_path / "unet" / "stale.safetensors").exists()  # the component folder was replaced whole
    assert (tmp_path / "checkpoint-3").is_dir()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert torch.equal(_weights(tmp_path)["conv_in.bias"], pipe.unet.conv_in.bias)
    assert isinstance(UnconditionalDiffusionPipeline.from_pretrained(tmp_path), UnconditionalDiffusionPipeline)


def test_a_failing_save_keeps_the_old_pipeline(tmp_path, monkeypatch):
    pipe = make_unconditional_pipe()
    pipe.save_pretrained(tmp_path)
    before = _weights(tmp_path)
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("custom_pipelines.hub.shims.write_shims", disk_full)
    with pytest.raises(OSError, match="No space left"):
        pipe.save_pretrained(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    after = _weights(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    UnconditionalDiffusionPipeline.from_pretrained(tmp_path)


def test_a_crash_between_moves_leaves_no_index(tmp_path, monkeypatch):
    """Killed after the old index was removed and before the new one lands: the folder is not a pipeline (a loader
    says so) rather than a mix of old and new components."""
    from custom_pipelines.hub import mixin

    pipe = make_unconditional_pipe()
    pipe.save_pretrained(tmp_path)
    real_replace, calls = os.replace, []

    def crash_on_index(src, dst):
        if os.fspath(dst) == os.path.join(tmp_path, "model_index.json"):
            raise KeyboardInterrupt  # stands for the process dying here
        if os.path.dirname(os.fspath(dst)) == os.fspath(tmp_path):
            calls.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(mixin.os, "replace", crash_on_index)
    with pytest.raises(KeyboardInterrupt):
        pipe.save_pretrained(tmp_path)
    assert calls and not (tmp_path / "model_index.json").exists()
    monkeypatch.setattr(mixin.os, "replace", real_replace)
    with pytest.raises((OSError, ValueError, EnvironmentError)):
        UnconditionalDiffusionPipeline.from_pretrained(tmp_path)
