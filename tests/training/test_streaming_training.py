"""Training from a stream (`--train_shards`, `--dataset_name DIR --streaming`): it trains, saves and loads; a run
SIGKILLed at three points and resumed ends bit-identical to an uninterrupted one, across an epoch boundary; two
processes each read their own share; scripts that cannot stream yet say so."""

import json

import pytest
import torch

from custom_pipelines import UnconditionalDiffusionPipeline
from tests.training.streaming_data import digits_rows, write_parquet_dataset, write_tar_shards
from training import train_ddpm


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 22 digits in 3 shards: 5 full batches of 4 per epoch, so 6 steps cross an epoch boundary
    return write_tar_shards(tmp_path_factory.mktemp("shards"), digits_rows(22), num_shards=3)


def stream_args(output_dir, shards, *extra):
    return [
        "--train_shards", shards, "--shuffle_buffer_size", "8", "--random_flip", "--output_dir", str(output_dir),
        "--model_config", "ddpm-tiny-8", "--resolution", "8", "--train_batch_size", "4", "--max_train_steps", "6",
        "--checkpointing_steps", "2", "--validation_steps", "6", "--num_validation_images", "2",
        "--num_inference_steps", "1", "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0",
        "--report_to", "none", *extra,
    ]  # fmt: skip


def test_a_streamed_run_trains_saves_and_loads(tmp_path, shards):
    out = tmp_path / "run"
    train_ddpm.main(train_ddpm.parse_args(stream_args(out, shards)))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    # 5 batches in epoch 0, then one of epoch 1
    assert state["data_positions"] == [{"epoch": 1, "batches": 1, "bad_samples": 0}]
    pipe = UnconditionalDiffusionPipeline.from_pretrained(out)
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and 0 <= images.min() and images.max() <= 1


@pytest.fixture(scope="module")
def shards_with_bad_members(tmp_path_factory):
    """24 members in 3 shards: 22 digits and 2 that are not images (a truncated PNG, bytes of text), so one epoch is
    6 batches of 4 places, 2 of them bad."""
    rows = digits_rows(22)
    rows.insert(5, (rows[0][0][:40], 1))  # a PNG cut short: its header reads, its pixels do not
    rows.insert(17, (b"this is not an image", 2))
    return write_tar_shards(tmp_path_factory.mktemp("bad-shards"), rows, num_shards=3)


def test_undecodable_members_are_skipped_counted_and_bounded(tmp_path, shards_with_bad_members, caplog):
    out = tmp_path / "run"
    argv = stream_args(out, shards_with_bad_members, "--max_bad_samples", "2")
    with caplog.at_level("WARNING"):
        train_ddpm.main(train_ddpm.parse_args(argv))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["bad_samples"] == [2]  # one epoch: each bad member read once
    skipped = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(skipped) == 2 and any("UnidentifiedImageError" in m for m in skipped), skipped
    # one over the limit: every rank stops with the flag named, and no pipeline is written
    stopped = tmp_path / "stopped"
    with pytest.raises(ValueError, match=r"2 streamed examples could not be decoded, more than --max_bad_samples 1"):
        train_ddpm.main(train_ddpm.parse_args(stream_args(stopped, shards_with_bad_members, "--max_bad_samples", "1")))
    assert not (stopped / "model_index.json").exists()
    with pytest.raises(ValueError, match="--max_bad_samples must be >= 0"):
        train_ddpm.parse_args(stream_args(stopped, shards_with_bad_members, "--max_bad_samples", "-1"))


@pytest.mark.slow
def test_a_stream_with_bad_members_resumes_bit_identical(tmp_path, shards_with_bad_members):
    """A bad member keeps its place in its batch (the batch is one example shorter), so batch k covers the same
    stretch of the stream before and after a kill."""
    from tests.training.kill_resume import check_kill_points

    files = ["unet/diffusion_pytorch_model.safetensors"]
    args_for = lambda out: stream_args(out, shards_with_bad_members, "--use_ema")  # noqa: E731
    assert check_kill_points("train_ddpm.py", args_for, tmp_path, files, points=("checkpoint:4",)) == 1


def test_a_parquet_hub_layout_folder_streams(tmp_path):
    data = write_parquet_dataset(tmp_path / "digits-parquet", digits_rows(16))
    out = tmp_path / "run"
    argv = stream_args(out, "unused", "--max_train_steps", "3", "--validation_steps", "3")
    argv[argv.index("--train_shards") : argv.index("--train_shards") + 2] = ["--dataset_name", data, "--streaming"]
    train_ddpm.main(train_ddpm.parse_args(argv))
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 3


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_a_stream_bit_identical(tmp_path, shards):
    from tests.training.kill_resume import check_kill_points

    files = ["unet/diffusion_pytorch_model.safetensors"]
    survived = check_kill_points("train_ddpm.py", lambda out: stream_args(out, shards, "--use_ema"), tmp_path, files)
    assert survived == 3


@pytest.mark.slow
def test_two_processes_stream_their_own_shares(tmp_path, shards):
    from tests.training.processes import launch_two_processes

    out = tmp_path / "ddp"
    summary = launch_two_processes("train_ddpm.py", stream_args(out, shards, "--max_train_steps", "4"))
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    sums = summary["param_checksums"]["unet"]
    assert sums[0] == sums[1]  # DDP kept the ranks in step
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    # 22 examples over 2 ranks (3 shards do not divide by 2: every other example): 11 each, 2 full batches an epoch
    assert [p["epoch"] for p in state["data_positions"]] == [1, 1]


def test_reading_a_stream_as_a_map_style_dataset_is_refused(tmp_path, shards):
    from custom_pipelines.training.data import load_train_dataset

    args = train_ddpm.parse_args(stream_args(tmp_path, shards))
    with pytest.raises(ValueError, match=r"--streaming / --train_shards: .* train_srgan.py, train_cyclegan.py stream"):
        load_train_dataset(args, 8)  # a script path that would read the whole dataset says so


def test_class_conditional_training_streams_with_num_classes(tmp_path, shards):
    from custom_pipelines import ClassConditionalDiffusionPipeline
    from custom_pipelines.models.class_conditioning import num_classes_of
    from training import train_cfg

    argv = stream_args(tmp_path / "cfg", shards, "--max_train_steps", "3", "--validation_steps", "3")
    argv[argv.index("--model_config") + 1] = "cfg-tiny-8"
    with pytest.raises(ValueError, match=r"plain integer labels needs --num_classes"):
        train_cfg.main(train_cfg.parse_args(argv))
    with pytest.raises(ValueError, match=r"a streamed label is [4-9], outside --num_classes 4"):
        train_cfg.main(train_cfg.parse_args([*argv, "--num_classes", "4", "--overwrite_output_dir"]))
    train_cfg.main(train_cfg.parse_args([*argv, "--num_classes", "10", "--overwrite_output_dir"]))
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(tmp_path / "cfg")
    assert num_classes_of(pipe.unet) == 10
    images = pipe(class_labels=[3, 7], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        (["--max_train_steps", None], "--streaming needs --max_train_steps"),
        (["--shuffle_buffer_size", "-1"], "--shuffle_buffer_size must be >= 0"),
        (["--dataset_name", "digits"], "give exactly one of --dataset_name, --train_data_dir and --train_shards"),
    ],
)
def test_bad_streaming_flags_name_themselves(tmp_path, shards, change, message):
    argv = stream_args(tmp_path, shards)
    flag, value = change
    if value is None:
        i = argv.index(flag)
        del argv[i : i + 2]
        argv += ["--num_epochs", "1"]
    elif flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    with pytest.raises(ValueError, match=message):
        train_ddpm.parse_args(argv)


def test_a_shard_pattern_that_matches_nothing_fails_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--train_shards .* matches no file"):
        train_ddpm.main(train_ddpm.parse_args(stream_args(out, str(tmp_path / "none-{0..3}.tar"))))
    assert not (out / "metrics.jsonl").exists()


def test_the_first_batches_of_a_stream_are_those_the_data_level_gives(tmp_path, shards):
    """The trainer's loader is the data level's loader: a guard against accelerate re-splitting the stream."""
    from custom_pipelines.training.data import make_streaming_dataloader

    args = train_ddpm.parse_args(stream_args(tmp_path, shards))
    items, loader = make_streaming_dataloader(args, 8, 1)
    items.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 5 and all(b["pixel_values"].shape == (4, 1, 8, 8) for b in batches)
    assert torch.cat([b["labels"] for b in batches]).numel() == 20
