"""Streaming beyond plain images: text-to-image latent diffusion from webdataset shards of image + caption
(`KEY.png` + `KEY.txt`), the captions encoded batch by batch; the autoencoder from a stream with its held-out images
taken off the stream's start; super-resolution pairs cut from streamed photos; CycleGAN's two domains as two
streams; kills mid-run resume the streamed LDM and CycleGAN bit-identically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
from tests.training.streaming_data import digits_rows, write_parquet_dataset, write_tar_shards
from tests.training.test_train_cyclegan import config as cyclegan_config  # noqa: F401 (the tiny CycleGAN)
from tests.training.test_train_cyclegan import tiny_args as cyclegan_args
from tests.training.test_train_ldm import configs as ldm_configs  # noqa: F401 (fixtures of the tiny LDM)
from tests.training.test_train_ldm import tiny_args as ldm_args
from tests.training.test_train_ldm import vae_dir as ldm_vae_dir  # noqa: F401
from tests.training.test_train_srgan import configs as sr_configs  # noqa: F401 (tiny SRResNet / SRGAN variants)
from tests.training.test_train_srgan import tiny_args as sr_args
from tests.training.test_train_vae import config as vae_config  # noqa: F401 (the tiny VAE + PatchGAN variant)
from training import train_ldm

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def caption_shards(tmp_path_factory):
    """24 digits at 16×16 in 3 shards, each with a caption saying its digit (`.txt`, webdataset's caption member)."""
    rows = digits_rows(24, resolution=16)
    captions = [f"a handwritten {WORDS[label]}" for _, label in rows]
    return write_tar_shards(tmp_path_factory.mktemp("captioned"), rows, num_shards=3, captions=captions)


def streamed_ldm_args(vae_dir, configs, output_dir, shards, *extra):
    argv = ldm_args(vae_dir, configs, output_dir, "text", "--shuffle_buffer_size", "8", "--max_train_steps", "6",
                    "--use_ema", *extra)  # fmt: skip
    i = argv.index("--dataset_name")
    argv[i : i + 2] = ["--train_shards", shards]
    for flag in ("--max_train_samples",):  # a stream has no length to take a part of here
        j = argv.index(flag)
        del argv[j : j + 2]
    return argv


def test_text_latent_diffusion_streams_captions(ldm_vae_dir, ldm_configs, caption_shards, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train_ldm.main(train_ldm.parse_args(streamed_ldm_args(ldm_vae_dir, ldm_configs, out, caption_shards)))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["bad_samples"] == [0]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["data_positions"] == [{"epoch": 1, "batches": 3, "bad_samples": 0}]  # 24 / 8 = 3 batches an epoch
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(rows) == 6 and all(np.isfinite(r["loss"]) and 0 <= r["null_condition_fraction"] <= 1 for r in rows)
    pipe = LatentDiffusionPipeline.from_pretrained(out)
    images = pipe(prompt=["a handwritten three"] * 2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()
    card = (out / "README.md").read_text()
    assert "a handwritten" in card  # the validation prompts came from the stream's own captions


def test_streamed_class_conditioning_needs_a_classlabel(ldm_vae_dir, ldm_configs, tmp_path):  # noqa: F811
    """A parquet stream's plain integer labels name no classes: a clear error naming --label_column, nothing
    written."""
    data = write_parquet_dataset(tmp_path / "digits-parquet", digits_rows(16, resolution=16))
    out = tmp_path / "run"
    argv = ldm_args(ldm_vae_dir, ldm_configs, out, "class")
    argv[argv.index("--dataset_name") + 1] = data
    j = argv.index("--max_train_samples")
    del argv[j : j + 2]
    with pytest.raises(ValueError, match=r"--conditioning class of a stream needs a ClassLabel column \(--label_col"):
        train_ldm.main(train_ldm.parse_args([*argv, "--streaming"]))
    assert not (out / "model_index.json").exists()


@pytest.mark.slow
def test_a_streamed_text_ldm_killed_mid_checkpoint_resumes_bit_identical(
    ldm_vae_dir,  # noqa: F811
    ldm_configs,  # noqa: F811
    caption_shards,
    tmp_path,
):
    from tests.training.kill_resume import check_kill_points

    files = ["unet/diffusion_pytorch_model.safetensors"]

    def args_for(out):
        return streamed_ldm_args(ldm_vae_dir, ldm_configs, out, caption_shards)

    assert check_kill_points("train_ldm.py", args_for, tmp_path, files, points=("checkpoint:4", "step:5")) == 2


def test_the_autoencoder_streams_with_its_heldout_images_off_the_start(vae_config, caption_shards, tmp_path):  # noqa: F811
    """train_vae.py from shards: the first --heldout_images examples are held out (never trained on), the rest is
    streamed; the folder is an AutoencoderKL with its measured latent scale and held-out metrics."""
    from diffusers import AutoencoderKL

    from training import train_vae

    config = vae_config
    out = tmp_path / "run"
    argv = [
        "--model_config", str(config), "--train_shards", caption_shards, "--shuffle_buffer_size", "4",
        "--output_dir", str(out), "--resolution", "16", "--train_batch_size", "4", "--heldout_images", "4",
        "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "3",
        "--num_validation_images", "2", "--logging_steps", "1", "--report_to", "none", "--disc_start", "100",
    ]  # fmt: skip
    train_vae.main(train_vae.parse_args(argv))
    metrics = json.loads((out / "reconstruction_metrics.json").read_text())
    assert metrics["heldout_images"] == 4 and np.isfinite(metrics["heldout_psnr"]) and metrics["scaling_factor"] > 0
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["data_positions"] == [{"epoch": 0, "batches": 3, "bad_samples": 0}]  # 20 left: 5 batches an epoch
    vae = AutoencoderKL.from_pretrained(out)
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory):
    """12 RGB crops (48×48) of scikit-image's training photos in 2 webdataset shards."""
    import io

    from custom_pipelines.data.paired import TRAIN_PHOTOS, bundled_photo

    rows = []
    for i in range(12):
        photo = bundled_photo(TRAIN_PHOTOS[i % len(TRAIN_PHOTOS)])
        left, top = 20 * i, 10 * i
        buffer = io.BytesIO()
        photo.crop((left, top, left + 48, top + 48)).save(buffer, format="PNG")
        rows.append((buffer.getvalue(), 0))
    return write_tar_shards(tmp_path_factory.mktemp("photos"), rows, num_shards=2)


def test_super_resolution_cuts_its_pairs_from_a_stream(sr_configs, photo_shards, tmp_path):  # noqa: F811
    """train_srgan.py from shards: one random LR/HR pair per streamed photo, the saved pipeline upscales ×4."""
    from custom_pipelines.pipelines.pipeline_super_resolution import SuperResolutionPipeline
    from training import train_srgan

    out = tmp_path / "run"
    argv = [*sr_args(sr_configs, "srresnet", out), "--train_shards", photo_shards, "--shuffle_buffer_size", "4"]
    del argv[argv.index("--num_train_patches") : argv.index("--num_train_patches") + 2]
    train_srgan.main(train_srgan.parse_args(argv))
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["data_positions"] == [{"epoch": 1, "batches": 1, "bad_samples": 0}]  # 12 photos: 3 batches of 4
    pipe = SuperResolutionPipeline.from_pretrained(out)
    from PIL import Image

    upscaled = pipe(image=Image.new("RGB", (8, 8), (120, 60, 30)), output_type="np").images
    assert upscaled.shape == (1, 32, 32, 3) and np.isfinite(upscaled).all()


@pytest.fixture(scope="module")
def domain_shards(tmp_path_factory):
    """Two domains as two sets of webdataset shards: 16 digits (A) and 16 other digits, strokes thickened (B)."""
    import io

    from PIL import Image

    from custom_pipelines.data.unpaired import thicken_strokes

    rows = digits_rows(32, resolution=8)
    thick = []
    for png, label in rows[16:]:
        buffer = io.BytesIO()
        thicken_strokes(Image.open(io.BytesIO(png))).save(buffer, format="PNG")
        thick.append((buffer.getvalue(), label))
    root = tmp_path_factory.mktemp("domains")
    return write_tar_shards(root / "a", rows[:16], 2), write_tar_shards(root / "b", thick, 2)


def test_cyclegan_reads_its_two_domains_as_two_streams(cyclegan_config, domain_shards, tmp_path):  # noqa: F811
    """train_cyclegan.py with --train_shards (A) and --train_shards_b (B): each item pairs the k-th of both streams,
    the first --num_eval_images of each are held out for the cycle error, the pipeline translates both ways; a kill
    after an update resumes bit-identically."""
    from custom_pipelines.pipelines.pipeline_cyclegan import CycleGANPipeline
    from tests.training.kill_resume import check_kill_points
    from training import train_cyclegan

    shards_a, shards_b = domain_shards

    def args_for(out):
        argv = [*cyclegan_args(cyclegan_config, out), "--train_shards", shards_a, "--train_shards_b", shards_b]
        argv += ["--shuffle_buffer_size", "4", "--num_eval_images", "4", "--checkpointing_steps", "2"]
        for flag in ("--dataset_name", "--max_train_samples"):
            del argv[argv.index(flag) : argv.index(flag) + 2]
        return argv

    out = tmp_path / "run"
    train_cyclegan.main(train_cyclegan.parse_args(args_for(out)))
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["data_positions"] == [{"epoch": 1, "batches": 3, "bad_samples": 0}]  # 12 pairs: 3 batches of 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/cycle_l1_a" in r for r in rows) and all(np.isfinite(r.get("d_loss", 0.0)) for r in rows)
    pipe = CycleGANPipeline.from_pretrained(out)
    from PIL import Image

    translated = pipe(image=Image.new("L", (8, 8), 128), direction="b_to_a", output_type="np").images
    assert translated.shape == (1, 8, 8, 1) and np.isfinite(translated).all()
    files = ["generator_a_to_b/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_cyclegan.py", args_for, tmp_path, files, points=("step:3",)) == 1


def test_cyclegan_splits_one_stream_by_its_domain_column(cyclegan_config, tmp_path):  # noqa: F811
    """One set of shards holding both domains, told apart by `KEY.cls` (0: thin, 1: thick) and --domain_column."""
    import io

    from PIL import Image

    from custom_pipelines.data.unpaired import thicken_strokes
    from training import train_cyclegan

    rows = []
    for i, (png, _) in enumerate(digits_rows(24, resolution=8)):
        if i % 2:
            buffer = io.BytesIO()
            thicken_strokes(Image.open(io.BytesIO(png))).save(buffer, format="PNG")
            png = buffer.getvalue()
        rows.append((png, i % 2))
    shards = write_tar_shards(tmp_path / "both", rows, num_shards=2)
    out = tmp_path / "run"
    argv = [*cyclegan_args(cyclegan_config, out), "--train_shards", shards, "--domain_column", "label"]
    argv += ["--domain_a", "0", "--domain_b", "1", "--num_eval_images", "2", "--shuffle_buffer_size", "0"]
    for flag in ("--dataset_name", "--max_train_samples"):
        del argv[argv.index(flag) : argv.index(flag) + 2]
    train_cyclegan.main(train_cyclegan.parse_args(argv))
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    # 12 images a domain, 2 held out each: 10 pairs, 2 full batches of 4 an epoch; 6 steps end in epoch 2
    assert state["data_positions"] == [{"epoch": 2, "batches": 2, "bad_samples": 0}]
