"""`--dataloader_num_workers N` gives exactly the batches of a 0-worker run: each item's random crop and flip come
from its own (seed, epoch, index) generator, not from one generator copied into every worker."""

import json

import pytest
import torch

from custom_pipelines.data import load_image_dataset
from custom_pipelines.training.data import ImageItems, TransformedImages, make_image_dataloader
from tests.training.test_image_cache import parse  # batch 8, seed 3


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", resolution=12).select(range(48))


def epochs_of_batches(args, dataset, epochs=2):
    loader = make_image_dataloader(args, dataset, resolution=12, channels=1)
    out = []
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)  # as the trainer does before each epoch
        out.append([b["pixel_values"] for b in loader])
    return loader, out


@pytest.mark.parametrize(
    "flags, items_class",
    [
        (["--random_flip", "--max_train_steps", "30"], TransformedImages),  # cached, flips per read
        (["--random_flip", "--no-center_crop", "--max_train_steps", "30"], ImageItems),  # random crops on the fly
    ],
)
def test_two_workers_give_the_batches_of_none(digits, flags, items_class):
    loader, none = epochs_of_batches(parse(*flags), digits)
    assert type(loader.dataset) is items_class
    _, two = epochs_of_batches(parse(*flags, "--dataloader_num_workers", "2"), digits)
    assert [len(e) for e in none] == [6, 6]
    for epoch_none, epoch_two in zip(none, two):
        assert all(torch.equal(a, b) for a, b in zip(epoch_none, epoch_two, strict=True))
    # the draws change with the epoch: the same item is flipped or cropped differently somewhere
    items = ImageItems(digits, loader.dataset.transform, "image", None, seed=3)
    first = torch.stack([items[i]["pixel_values"] for i in range(len(items))])
    items.set_epoch(1)
    second = torch.stack([items[i]["pixel_values"] for i in range(len(items))])
    assert not torch.equal(first, second)
    again = torch.stack([items[i]["pixel_values"] for i in range(len(items))])
    assert torch.equal(second, again)  # and an item read twice in one epoch is the same


def test_about_half_of_the_items_are_flipped(digits):
    loader, _ = epochs_of_batches(parse("--random_flip", "--max_train_steps", "30"), digits, epochs=1)
    items, plain = loader.dataset, loader.dataset.pixel_values
    draws = [torch.equal(items[i]["pixel_values"], plain[i].flip(-1)) for i in range(len(items))]
    assert 10 < sum(draws) < 38  # about half of 48 mirrored, not all or none


@pytest.mark.slow
def test_a_training_run_with_two_workers_equals_one_without(tmp_path, fresh_accelerate_state):
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file

    from training import train_ddpm

    def run(folder, workers):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        argv = ["--dataset_name", "digits", "--model_config", "ddpm-tiny-8", "--resolution", "8",
                "--max_train_samples", "40", "--train_batch_size", "8", "--max_train_steps", "12", "--random_flip",
                "--no-center_crop",
                "--validation_steps", "12", "--num_validation_images", "2", "--num_inference_steps", "1",
                "--checkpointing_steps", "100", "--lr_warmup_steps", "0", "--mixed_precision", "no", "--report_to",
                "none", "--dataloader_num_workers", str(workers), "--output_dir", str(folder)]  # fmt: skip
        train_ddpm.main(train_ddpm.parse_args(argv))
        return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))

    none, two = run(tmp_path / "w0", 0), run(tmp_path / "w2", 2)
    assert none.keys() == two.keys() and all(torch.equal(none[k], two[k]) for k in none)
    summary = json.loads((tmp_path / "w2" / "training_summary.json").read_text())
    assert summary["global_step"] == 12


def test_the_default_number_of_workers_follows_the_device(monkeypatch):
    from custom_pipelines.training.data import resolve_num_workers

    assert resolve_num_workers(3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_num_workers(None) == 0  # CPU training: the workers would take the model's cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_num_workers(None) == 4  # 8 cores per process: capped at 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_num_workers(None) == 1
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert resolve_num_workers(None) == 0
