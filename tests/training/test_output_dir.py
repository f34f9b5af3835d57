"""A run never mixes into another run's folder; a resumed run's metrics have each step once; colour data is never
trained as grey without a word; `--push_to_hub` fails before the first step when it can, and after a failed push the
model stays saved."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from custom_pipelines.cli import CommandFailed
from custom_pipelines.training import read_metrics
from custom_pipelines.training.output_dir import plan_output_dir, run_entries, truncate_run
from tests.training.test_trainer_core import make_trainer, parse


def steps_logged(folder) -> list[int]:
    return [row["step"] for row in read_metrics(str(folder)) if "loss" in row]


def fake_old_run(folder) -> None:
    """What a finished run leaves: checkpoints, grids, logs, metrics, a pipeline with components, a card."""
    for sub in ("checkpoint-1500", "samples", "logs/train_ddpm", "unet", "scheduler"):
        os.makedirs(folder / sub, exist_ok=True)
    (folder / "checkpoint-1500" / "trainer_state.json").write_text(json.dumps({"global_step": 1500}))
    (folder / "samples" / "step_001500.png").write_bytes(b"png")
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    (folder / "model_index.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in (10, 1500)))
    for name in ("loss_curve.png", "samples.png", "samples_8_steps.png", "optimized_timesteps.json", "README.md"):
        (folder / name).write_text("x")
    (folder / "training_summary.json").write_text("{}")


def test_a_fresh_run_into_a_run_folder_is_refused_and_the_folder_is_untouched(tmp_path):
    fake_old_run(tmp_path)
    before = sorted(os.listdir(tmp_path))
    match = r"already holds a finished run \(.*\): pass --resume_from_checkpoint latest to continue that run, pass "
    with pytest.raises(ValueError, match=match + "--overwrite_output_dir to replace it, or choose another folder"):
        make_trainer(parse(tmp_path, "--max_train_steps", "3"), [])
    assert sorted(os.listdir(tmp_path)) == before
    assert steps_logged(tmp_path) == [10, 1500]


def test_a_folder_of_other_files_is_refused_too(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds files of another run \(notes.txt\): pass --overwrite_output"):
        make_trainer(parse(tmp_path, "--max_train_steps", "3"), [])


def test_overwrite_replaces_the_old_run_and_keeps_foreign_files(tmp_path, caplog):
    fake_old_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING):
        make_trainer(parse(tmp_path, "--max_train_steps", "3", "--overwrite_output_dir"), []).train()
    assert steps_logged(tmp_path) == [1, 2, 3]  # nothing of the old run's curve
    left = set(os.listdir(tmp_path))
    assert not left & {"checkpoint-1500", "unet", "scheduler", "model_index.json", "samples.png"}
    assert not left & {"samples_8_steps.png", "optimized_timesteps.json"}
    assert os.listdir(tmp_path / "samples") == ["step_000003.png"]  # the new run's last grid only
    assert (tmp_path / "notes.txt").read_text() == "mine" and "left in place" in caplog.text


def test_an_empty_or_missing_folder_is_fine(tmp_path):
    make_trainer(parse(tmp_path / "new" / "run", "--max_train_steps", "2"), []).train()
    assert steps_logged(tmp_path / "new" / "run") == [1, 2]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    # a run killed after step 8 (checkpoint at 5, metrics logged to 8), resumed from checkpoint-5
    make_trainer(parse(tmp_path, "--max_train_steps", "8", "--checkpointing_steps", "5"), []).train()
    assert steps_logged(tmp_path) == list(range(1, 9))
    (tmp_path / "training_summary.json").unlink()  # as if killed before the end
    args = parse(tmp_path, "--max_train_steps", "12", "--resume_from_checkpoint", "latest")
    trainer = make_trainer(args, [])
    assert args.resume_step == 5
    assert steps_logged(tmp_path) == list(range(1, 6))  # 6..8 dropped: the resumed run logs them again
    trainer.train()
    assert steps_logged(tmp_path) == list(range(1, 13))

    args = parse(tmp_path, "--max_train_steps", "12", "--resume_from_checkpoint", str(tmp_path / "checkpoint-5"))
    make_trainer(args, []).train()
    assert args.resume_step == 5
    assert steps_logged(tmp_path) == list(range(1, 13))  # 6..12 dropped, then written again once


def test_truncate_drops_records_and_grids_after_the_step_and_a_torn_line(tmp_path):
    rows = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 4')  # killed mid-write
    os.makedirs(tmp_path / "samples")
    for s in (10, 30):
        (tmp_path / "samples" / f"step_{s:06d}.png").write_bytes(b"png")
    truncate_run(str(tmp_path), 20)
    assert steps_logged(tmp_path) == [10, 20]
    assert os.listdir(tmp_path / "samples") == ["step_000010.png"]


def test_resume_latest_without_a_checkpoint_replaces_the_dead_attempt(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 9.0}) + "\n")
    os.makedirs(tmp_path / "logs")
    make_trainer(parse(tmp_path, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"), []).train()
    assert steps_logged(tmp_path) == [1, 2]


def test_resume_latest_into_a_finished_run_without_checkpoints_is_refused(tmp_path):
    fake_old_run(tmp_path)
    os.rename(tmp_path / "checkpoint-1500", tmp_path / "old-checkpoint")
    with pytest.raises(ValueError, match="finished run with no checkpoint to resume from"):
        plan_output_dir(str(tmp_path), None, resume_requested=True, overwrite=False)


def test_overwrite_and_resume_contradict(tmp_path):
    from custom_pipelines.training import validate_common_args

    args = parse(tmp_path, "--max_train_steps", "2", "--dataset_name", "digits", "--overwrite_output_dir")
    args.resume_from_checkpoint = "latest"
    with pytest.raises(ValueError, match="--overwrite_output_dir and --resume_from_checkpoint contradict"):
        validate_common_args(args)


def test_run_entries_know_components_and_leave_foreign_folders(tmp_path):
    fake_old_run(tmp_path)
    os.makedirs(tmp_path / "my_data")
    (tmp_path / "my_data" / "a.png").write_bytes(b"png")
    ours, other = run_entries(str(tmp_path))
    assert {"unet", "scheduler", "checkpoint-1500", "logs", "samples"} <= set(ours) and other == ["my_data"]


# ----- colour data and the model's channels ---------------------------------------------------------------------
def write_images(folder, colour: bool, n: int = 4, size: int = 12) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        grey = rng.integers(0, 255, (size, size), dtype=np.uint8)
        rgb = np.stack([grey, grey, grey], -1)
        if colour:
            rgb[..., 0] = 255 - grey  # red differs from green
        Image.fromarray(rgb).save(os.path.join(folder, f"{i}.png"))
    return str(folder)


def test_has_colour_reads_the_pixels_not_the_mode():
    from custom_pipelines.training.data import has_colour

    grey = np.full((8, 8, 3), 77, np.uint8)
    assert not has_colour(Image.fromarray(grey))  # an RGB file of grey pixels
    assert not has_colour(Image.fromarray(grey[..., 0]))
    grey[2, 3, 1] = 200
    assert has_colour(Image.fromarray(grey))
    assert has_colour(Image.fromarray(grey).convert("P"))


@pytest.fixture
def fresh_state(fresh_accelerate_state):
    yield


def test_colour_images_into_the_grey_default_ddpm_are_refused_before_training(tmp_path):
    from training import train_ddpm

    data = write_images(tmp_path / "rgb", colour=True)
    out = tmp_path / "out"
    argv = ["--train_data_dir", data, "--resolution", "8", "--output_dir", str(out), "--max_train_steps", "2",
            "--model_config", "ddpm-tiny-8", "--report_to", "none"]  # fmt: skip
    with pytest.raises(ValueError, match=r"in colour .*takes 1 channel.*--model_config.*ddpm-cifar10-32"):
        train_ddpm.main(train_ddpm.parse_args(argv))
    assert not (out / "metrics.jsonl").exists() and not (out / "model_index.json").exists()


def test_a_run_that_stops_on_bad_data_deletes_nothing_even_with_overwrite(tmp_path):
    from training import train_ddpm

    out = tmp_path / "out"
    out.mkdir()
    fake_old_run(out)
    before = sorted(os.listdir(out))
    argv = ["--train_data_dir", write_images(tmp_path / "rgb", colour=True), "--resolution", "8", "--output_dir",
            str(out), "--max_train_steps", "2", "--model_config", "ddpm-tiny-8", "--overwrite_output_dir"]  # fmt: skip
    with pytest.raises(ValueError, match="in colour"):
        train_ddpm.main(train_ddpm.parse_args(argv))
    assert sorted(os.listdir(out)) == before  # the old run is cleared only once every check has passed


def test_grey_images_in_rgb_files_train_a_grey_model(tmp_path):
    from custom_pipelines.training.data import check_image_channels

    data = write_images(tmp_path / "grey-rgb", colour=False)
    args = parse(tmp_path / "o", "--train_data_dir", data, "--max_train_steps", "1")
    from custom_pipelines.data import load_image_dataset

    dataset = load_image_dataset(None, data)
    check_image_channels(args, dataset, 1)  # no error: the pixels are grey
    colour = load_image_dataset(None, write_images(tmp_path / "rgb", colour=True))
    check_image_channels(args, colour, 3)  # a colour model takes colour
    with pytest.raises(ValueError, match=r"pick a 3-channel --vae_name_or_path"):
        check_image_channels(args, colour, 1, "--vae_name_or_path", "runs/vae-digits-32")


# ----- --push_to_hub ----------------------------------------------------------------------------------------------
def test_push_preflight_reasons(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from custom_pipelines.hub.push import push_preflight_error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "offline mode" in push_preflight_error("user/tiny", "hf_x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert "not a valid repo id" in push_preflight_error("user/with space", "hf_x")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    assert "no Hub token" in push_preflight_error("user/tiny", None)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing answers
    assert "did not answer whoami" in push_preflight_error("user/tiny", "hf_x")


def test_push_to_hub_in_offline_mode_fails_before_the_first_step(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = parse(tmp_path / "run", "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "user/tiny")
    with pytest.raises(ValueError, match=r"--push_to_hub: huggingface_hub is in offline mode"):
        make_trainer(args, [])
    assert not (tmp_path / "run").exists()  # nothing written: the folder is not even made


def test_a_failed_push_keeps_the_saved_run_and_says_how_to_push_later(monkeypatch, tmp_path):
    import custom_pipelines.hub.push as push
    import custom_pipelines.training.trainer as trainer_module

    monkeypatch.setattr(push, "push_preflight_error", lambda repo_id, token: None)

    def broken_push(*args, **kwargs):
        raise ConnectionError("the network went away")

    monkeypatch.setattr(trainer_module, "push_folder_to_hub", broken_push)
    args = parse(tmp_path, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "user/tiny")
    with pytest.raises(CommandFailed, match=r"push to user/tiny failed .*ConnectionError.*saved in") as err:
        make_trainer(args, []).train()
    assert f"python -m custom_pipelines.hub.push {tmp_path} user/tiny" in str(err.value)
    assert (tmp_path / "training_summary.json").is_file()  # the run finished and saved before the push
