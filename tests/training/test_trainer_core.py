"""The trainer core's slots for the next families, on toy models: a script's own dataset and collate (with exact
resume), frozen networks, and per-optimizer lr schedules."""

import argparse
import os

import pytest
import torch

from custom_pipelines.training import Trainer, add_common_args, create_accelerator, read_metrics
from custom_pipelines.training.trainer import _freeze


class Pairs(torch.utils.data.Dataset):
    """A stand-in for LR/HR pairs: item i is (i, 2i)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"low": torch.tensor([float(i)]), "high": torch.tensor([2.0 * i])}


def collate_pairs(items):
    return {"low": torch.stack([x["low"] for x in items]), "high": torch.stack([x["high"] for x in items])}


def parse(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return parser.parse_args(
        ["--output_dir", str(tmp_path), "--train_batch_size", "4", "--report_to", "none", "--logging_steps", "1",
         "--validation_steps", "1000", "--checkpointing_steps", "1000", "--lr_warmup_steps", "0", *extra]
    )  # fmt: skip


def make_trainer(args, seen, *, frozen=None, two_optimizers=False, step_every=None, poison=()):
    torch.manual_seed(0)
    models = {"net": torch.nn.Linear(1, 1)}
    if two_optimizers:
        models["critic"] = torch.nn.Linear(1, 1)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.1) for name, m in models.items()}

    def training_step(trainer, batch):
        seen.append(batch["low"].flatten().tolist())
        if frozen is not None:
            assert not any(p.requires_grad for p in trainer.frozen["teacher"].parameters())
            # frozen networks run in the compute dtype (bf16 under bf16 autocast): inputs are cast to it
            target = trainer.frozen["teacher"](batch["low"].to(trainer.compute_dtype)).float()
        else:
            target = batch["high"]
        loss = torch.nn.functional.mse_loss(trainer.models["net"](batch["low"]), target)
        if trainer.global_step + 1 in poison:  # a NaN loss on these updates
            loss = loss * float("nan")
        trainer.backward_and_step("net", loss)
        if two_optimizers:
            trainer.backward_and_step("critic", trainer.models["critic"](batch["low"]).pow(2).mean())
        return {"loss": loss}

    return Trainer(
        args,
        create_accelerator(args),
        models=models,
        optimizers=optimizers,
        training_step=training_step,
        sample_images=lambda trainer: torch.zeros(1, 1, 4, 4),
        save_pipeline=lambda trainer, out: None,
        frozen_models={"teacher": frozen} if frozen is not None else None,
        optimizer_step_every=step_every,
        resolution=4,
        family="toy",
        pipeline_class="GANPipeline",
        dataset=Pairs(),
        collate_fn=collate_pairs,
    )


def test_own_dataset_and_collate_resume_in_the_same_order(tmp_path):
    whole = []
    make_trainer(parse(tmp_path / "a", "--max_train_steps", "12"), whole).train()
    assert len(whole) == 12 and all(len(b) == 4 for b in whole)
    assert sorted(sum(whole[:5], [])) == [float(i) for i in range(20)]  # 5 batches of 4 = one epoch, each item once

    first, second = [], []
    make_trainer(parse(tmp_path / "b", "--max_train_steps", "7", "--checkpointing_steps", "7"), first).train()
    args = parse(tmp_path / "b", "--max_train_steps", "12", "--resume_from_checkpoint", "latest")
    make_trainer(args, second).train()
    assert first + second == whole  # the resumed run sees exactly the batches the uninterrupted one did


def test_frozen_network_is_on_device_in_eval_without_gradients_and_not_checkpointed(tmp_path):
    teacher = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Dropout(0.5))
    args = parse(tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "3")
    trainer = make_trainer(args, [], frozen=teacher)
    assert teacher[0].weight.dtype == trainer.compute_dtype
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert trainer.frozen["teacher"] is teacher and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    checkpoint = os.path.join(tmp_path, "checkpoint-3")
    weights = sorted(f for f in os.listdir(checkpoint) if f.startswith("model"))
    assert weights == ["model.safetensors"]  # the trained net only


def test_freeze_casts_to_the_compute_dtype():
    model = _freeze(torch.nn.Linear(2, 2), torch.device("cpu"), torch.bfloat16)
    assert model.weight.dtype == torch.bfloat16 and not model.training and not model.weight.requires_grad


def test_each_lr_schedule_is_sized_by_its_own_updates(tmp_path):
    # net steps every update, critic every update too but is declared as stepping every 5th: a cosine schedule
    # over 10 updates ends at 0 for net; for critic it is sized to ceil(10 / 5) = 2 steps
    args = parse(tmp_path, "--max_train_steps", "10", "--lr_scheduler", "cosine")
    trainer = make_trainer(args, [], two_optimizers=True, step_every={"critic": 5})
    assert trainer.optimizer_step_every == {"net": 1, "critic": 5}
    assert trainer.lr_schedulers["critic"].scheduler.lr_lambdas[0](2) == pytest.approx(0.0)
    assert trainer.lr_schedulers["net"].scheduler.lr_lambdas[0](2) > 0.9
    trainer.train()
    rows = read_metrics(str(tmp_path))
    assert {"lr_net", "lr_critic"} <= set(rows[0]) and "lr" not in rows[0]
    assert rows[-1]["lr_net"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step_every": {"nope": 2}}, "optimizer_step_every names 'nope'"),
        ({"step_every": {"net": 0}}, r"optimizer_step_every\['net'\] must be a positive integer"),
    ],
)
def test_bad_slots_raise(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(parse(tmp_path, "--max_train_steps", "2"), [], **kwargs)


def test_a_frozen_network_cannot_also_be_trained(tmp_path):
    args = parse(tmp_path, "--max_train_steps", "2")
    net = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="frozen_models \\['net'\\] are also trained"):
        Trainer(
            args, create_accelerator(args), models={"net": net}, optimizers={}, training_step=None,
            sample_images=None, save_pipeline=None, frozen_models={"net": net}, resolution=4, family="toy",
            pipeline_class="GANPipeline", dataset=Pairs(), collate_fn=collate_pairs,
        )  # fmt: skip


def test_a_nan_update_is_skipped_with_a_warning(tmp_path, caplog):
    import logging

    args = parse(tmp_path, "--max_train_steps", "6")
    trainer = make_trainer(args, [], poison={2, 3})
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert caplog.text.count("non-finite gradients of 'net'") == 2 and "update skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.unwrap("net").parameters())
    assert trainer.global_step == 6 and trainer.nonfinite_in_a_row == 0


def test_too_many_nan_updates_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from custom_pipelines.training.trainer import NonFiniteLossError

    args = parse(tmp_path, "--max_train_steps", "10", "--checkpointing_steps", "2", "--max_nonfinite_steps", "3")
    trainer = make_trainer(args, [], poison=set(range(3, 11)))
    with pytest.raises(NonFiniteLossError, match=r"3 updates in a row had NaN/inf gradients .*--learning_rate"):
        trainer.train()
    weights = load_file(os.path.join(tmp_path, "checkpoint-2", "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not os.path.exists(os.path.join(tmp_path, "training_summary.json"))  # no final save


def test_nan_weights_are_never_saved(tmp_path):
    from custom_pipelines.training.trainer import NonFiniteLossError

    trainer = make_trainer(parse(tmp_path, "--max_train_steps", "2"), [])
    with torch.no_grad():
        trainer.unwrap("net").weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="checkpoint-0 not saved: 1 tensors of 'net' hold NaN/inf"):
        trainer.save_checkpoint()
    assert not any(name.startswith("checkpoint-") for name in os.listdir(tmp_path))


def test_max_nonfinite_steps_must_be_positive(tmp_path):
    from custom_pipelines.training import validate_common_args

    args = parse(tmp_path, "--max_train_steps", "2", "--max_nonfinite_steps", "0", "--dataset_name", "digits")
    with pytest.raises(ValueError, match="--max_nonfinite_steps must be a positive integer"):
        validate_common_args(args)
