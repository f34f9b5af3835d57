"""`--cache_latents` on disk: the shards hold exactly the VAE's posterior parameters, a second run with the same VAE
and data reuses them (another VAE does not), a failed write leaves no cache, and a stream is cached once with its
captions and trained from the cache."""

from __future__ import annotations

import json
import os

import pytest
import torch
from diffusers import AutoencoderKL

from custom_pipelines.data import ImageTransform, load_image_dataset
from custom_pipelines.training.latent_cache import META_FILE, LatentCache, cache_key, dataset_source, write_cache
from tests.training.streaming_data import digits_rows, write_tar_shards
from tests.training.test_streaming_families import WORDS
from tests.training.test_train_ldm import configs as ldm_configs  # noqa: F401 (fixtures of the tiny LDM)
from tests.training.test_train_ldm import tiny_args
from tests.training.test_train_ldm import vae_dir as ldm_vae_dir  # noqa: F401
from training import train_ldm


def cache_folders(root) -> list[str]:
    return sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, META_FILE)))


def test_a_cached_run_writes_shards_that_a_second_run_reuses(ldm_vae_dir, ldm_configs, tmp_path):  # noqa: F811
    root = tmp_path / "latents"
    flags = ["--cache_latents", "--latent_cache_dir", str(root), "--max_train_steps", "2", "--validation_steps", "2"]
    train_ldm.main(train_ldm.parse_args(tiny_args(ldm_vae_dir, ldm_configs, tmp_path / "a", "class", *flags)))
    (folder,) = cache_folders(root)
    written = os.stat(root / folder / "shard-00000.safetensors").st_mtime_ns
    # the shards hold the VAE's posterior parameters of the center-cropped images, row for row
    vae = AutoencoderKL.from_pretrained(ldm_vae_dir)
    digits = load_image_dataset("digits", resolution=16).shuffle(seed=0).select(range(64))  # --max_train_samples 64
    cache = LatentCache(str(root / folder), labels=list(digits["label"]))
    assert len(cache) == 64 and cache[5]["labels"] == digits[5]["label"]
    pixels = torch.stack([ImageTransform(16, 1, center_crop=True)(digits[i]["image"]) for i in (0, 63)])
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.parameters
    torch.testing.assert_close(torch.stack([cache[0]["latent_parameters"], cache[63]["latent_parameters"]]), expected)
    # the same VAE and data: the same folder, not written again
    train_ldm.main(train_ldm.parse_args(tiny_args(ldm_vae_dir, ldm_configs, tmp_path / "b", "class", *flags)))
    assert cache_folders(root) == [folder]
    assert os.stat(root / folder / "shard-00000.safetensors").st_mtime_ns == written
    # another VAE (other weights): another folder
    assert cache_key(vae, dataset_source(digits, "image"), 16) == folder
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(1.0)
    assert cache_key(vae, dataset_source(digits, "image"), 16) != folder


def test_a_failed_write_leaves_no_cache(tmp_path):
    def batches():
        yield {"latent_parameters": torch.zeros(3, 4, 2, 2)}
        raise RuntimeError("killed mid-encode")

    with pytest.raises(RuntimeError, match="killed mid-encode"):
        write_cache(str(tmp_path / "cache" / "abc"), batches(), {"test": 1})
    assert os.listdir(tmp_path / "cache") == []  # neither the cache nor its temporary folder


def test_a_stream_is_cached_once_with_its_captions_and_trained_from_the_cache(
    ldm_vae_dir,  # noqa: F811
    ldm_configs,  # noqa: F811
    tmp_path,
):
    rows = digits_rows(20, resolution=16)
    shards = write_tar_shards(tmp_path / "shards", rows, 2, captions=[f"a handwritten {WORDS[y]}" for _, y in rows])
    root, out = tmp_path / "latents", tmp_path / "run"
    argv = tiny_args(ldm_vae_dir, ldm_configs, out, "text", "--cache_latents", "--latent_cache_dir", str(root))
    argv[argv.index("--dataset_name") : argv.index("--dataset_name") + 2] = ["--train_shards", shards]
    del argv[argv.index("--max_train_samples") : argv.index("--max_train_samples") + 2]
    train_ldm.main(train_ldm.parse_args(argv))
    (folder,) = cache_folders(root)
    meta = json.loads((root / folder / META_FILE).read_text())
    assert meta["rows"] == 20 and meta["source"]["files"][0][0].endswith("train-00000.tar")
    captions = json.loads((root / folder / "shard-00000.json").read_text())
    assert captions[0] == f"a handwritten {WORDS[rows[0][1]]}"  # stored order, before any shuffle
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and "bad_samples" not in summary  # trained from the cache, not the stream
