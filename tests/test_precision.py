"""`auto` precision: bf16 only where the device runs it natively, with the probes patched to each kind of device."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import pytest
import torch

from custom_pipelines import precision
from custom_pipelines.precision import (
    MIN_BF16_SPEEDUP,
    measure_bf16_speedup,
    resolve_mixed_precision,
    resolve_torch_dtype,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cpu(monkeypatch):
    """Make the CPU look like a chosen kind: `cpu(instructions=True, speedup=2.5)`; records probe calls."""
    calls = []

    def configure(instructions: bool, speedup: float):
        monkeypatch.setattr(precision, "cpu_has_bf16_instructions", lambda: instructions)

        def fake_speedup(device_type="cpu", size=256, repeats=5):
            calls.append(device_type)
            return speedup

        monkeypatch.setattr(precision, "measure_bf16_speedup", fake_speedup)
        monkeypatch.setattr(precision, "_warned", set())
        return calls

    return configure


def test_bf16_capable_cpu_gets_bf16(cpu):
    calls = cpu(instructions=True, speedup=2.7)
    choice = resolve_mixed_precision("auto", "cpu")
    assert (choice.mixed_precision, choice.torch_dtype) == ("bf16", torch.bfloat16)
    assert "2.7× fp32" in choice.reason and calls == ["cpu"]
    assert resolve_torch_dtype("auto", "cpu") == torch.bfloat16


def test_avx2_only_cpu_gets_fp32_without_timing_anything(cpu):
    calls = cpu(instructions=False, speedup=0.003)
    choice = resolve_mixed_precision("auto", "cpu")
    assert (choice.mixed_precision, choice.torch_dtype) == ("no", torch.float32)
    assert "no native bf16" in choice.reason or "reference kernels" in choice.reason
    assert calls == []  # the capability check alone decides: the slow bf16 matmul is never run for auto
    assert resolve_torch_dtype("auto", "cpu") == torch.float32


def test_false_positive_capability_is_caught_by_the_timed_probe(cpu):
    cpu(instructions=True, speedup=MIN_BF16_SPEEDUP - 0.3)
    choice = resolve_mixed_precision("auto", "cpu")
    assert choice.mixed_precision == "no" and "ran only" in choice.reason


def test_a_first_probe_slowed_by_load_is_rechecked_before_bf16_is_given_up(monkeypatch):
    """On a CPU with the bf16 instructions, a first probe under load (a parallel rank or test worker) that falls
    short is repeated, longer; the faster of the two decides. Without the instructions nothing is timed at all."""
    calls = []
    results = iter([MIN_BF16_SPEEDUP - 0.4, 2.1])

    def fake_speedup(device_type="cpu", size=256, repeats=7):
        calls.append(repeats)
        return next(results)

    monkeypatch.setattr(precision, "cpu_has_bf16_instructions", lambda: True)
    monkeypatch.setattr(precision, "measure_bf16_speedup", fake_speedup)
    choice = resolve_mixed_precision("auto", "cpu")
    assert choice.mixed_precision == "bf16" and "2.1× fp32" in choice.reason
    assert calls == [7, precision._RECHECK_REPEATS] and precision._RECHECK_REPEATS > 7


def write_checkpoint_state(folder: Path, **state) -> str:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4, **state}))
    return str(folder)


def test_a_resumed_auto_run_keeps_its_checkpoints_precision_without_probing(cpu, tmp_path):
    from custom_pipelines.training.trainer import resolve_run_precision

    calls = cpu(instructions=True, speedup=2.5)  # auto would pick bf16 here today ...
    fp32_run = write_checkpoint_state(tmp_path / "a" / "checkpoint-4", mixed_precision="no")
    choice = resolve_run_precision("auto", "cpu", resume_from=fp32_run)  # ... but the run began in fp32
    assert (choice.mixed_precision, choice.requested) == ("no", "auto")
    assert choice.reason == "kept from checkpoint-4, where the run began" and calls == []
    cpu(instructions=False, speedup=0.003)  # and a bf16 run moved to an AVX2 machine stays bf16: same run, slower
    bf16_run = write_checkpoint_state(tmp_path / "b" / "checkpoint-4", mixed_precision="bf16")
    assert resolve_run_precision("auto", "cpu", resume_from=bf16_run).mixed_precision == "bf16"
    # checkpoints from before the precision was recorded fall back to the probe
    old = write_checkpoint_state(tmp_path / "c" / "checkpoint-4")
    assert resolve_run_precision("auto", "cpu", resume_from=old).mixed_precision == "no"
    fp16_run = write_checkpoint_state(tmp_path / "d" / "checkpoint-4", mixed_precision="fp16")
    with pytest.raises(ValueError, match="trained in fp16, which needs a CUDA device"):
        resolve_run_precision("auto", "cpu", resume_from=fp16_run)


def test_an_explicit_precision_on_resume_wins_with_a_warning(cpu, tmp_path, caplog):
    from accelerate import PartialState

    from custom_pipelines.training.trainer import resolve_run_precision

    PartialState()  # accelerate's logger needs the state
    cpu(instructions=True, speedup=2.5)
    bf16_run = write_checkpoint_state(tmp_path / "checkpoint-4", mixed_precision="bf16")
    with caplog.at_level("WARNING"):
        assert resolve_run_precision("no", "cpu", resume_from=bf16_run).mixed_precision == "no"
    assert "resuming a run trained in bf16 with --mixed_precision no" in caplog.text


def test_ranks_whose_probes_disagree_all_train_in_fp32(monkeypatch):
    from custom_pipelines.training import trainer

    class TwoRanks:
        num_processes = 2

    monkeypatch.setattr(trainer, "PartialState", TwoRanks)
    bf16 = precision.PrecisionChoice("bf16", "auto", "bf16: CPU AVX512 + avx512_bf16: bf16 matmul 2.0× fp32")
    monkeypatch.setattr(trainer, "gather_object", lambda objs: ["bf16", "bf16"])
    assert trainer.agree_across_ranks(bf16) is bf16
    monkeypatch.setattr(trainer, "gather_object", lambda objs: ["bf16", "no"])
    agreed = trainer.agree_across_ranks(bf16)
    assert (agreed.mixed_precision, agreed.requested) == ("no", "auto") and "disagreed" in agreed.reason


def test_explicit_bf16_on_a_slow_cpu_runs_but_warns_once_with_the_slowdown(cpu):
    cpu(instructions=False, speedup=0.0025)
    with pytest.warns(UserWarning, match=r"bf16 matmul takes 400\.0× the fp32 time"):
        assert resolve_mixed_precision("bf16", "cpu").mixed_precision == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: a second request stays silent
        assert resolve_torch_dtype("bf16", "cpu") == torch.bfloat16


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "no")])
def test_cuda_picks_bf16_from_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    choice = resolve_mixed_precision("auto", "cuda")
    assert choice.mixed_precision == expected and f"{capability[0]}.{capability[1]}" in choice.reason


def test_explicit_choices_and_bad_input(cpu):
    cpu(instructions=True, speedup=3.0)
    assert resolve_mixed_precision("no", "cpu").mixed_precision == "no"
    with pytest.raises(ValueError, match="mixed_precision fp16 needs a CUDA device"):
        resolve_mixed_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"mixed_precision must be one of \('auto', 'no', 'fp16', 'bf16'\)"):
        resolve_mixed_precision("fp8", "cpu")
    assert resolve_mixed_precision("auto", "mps").mixed_precision == "no"
    assert resolve_torch_dtype(None, "cpu") is None
    assert resolve_torch_dtype("float16", "cpu") == torch.float16
    for bad in ("int8", torch.int64, 3):
        with pytest.raises(ValueError, match="torch_dtype must be 'auto'"):
            resolve_torch_dtype(bad, "cpu")


def test_the_real_probe_is_quick_and_sane():
    threads = torch.get_num_threads()
    start = time.perf_counter()
    speedup = measure_bf16_speedup.__wrapped__("cpu")  # uncached
    assert time.perf_counter() - start < 1.0
    assert torch.get_num_threads() == threads  # timed on one thread, then given back
    assert 1e-4 < speedup < 100
    choice = resolve_mixed_precision("auto", "cpu")  # this machine, whatever kind it is
    assert choice.mixed_precision in ("no", "bf16") and choice.reason


def test_trainer_resolves_once_for_the_run(cpu):
    from custom_pipelines.training.trainer import resolve_run_precision

    cpu(instructions=False, speedup=0.003)
    assert resolve_run_precision("auto").mixed_precision == "no"
    with pytest.raises(ValueError, match="^--mixed_precision fp16 needs a CUDA device"):
        resolve_run_precision("fp16")


def test_no_makefile_target_or_documented_command_hard_codes_bf16():
    """bf16 is 370× slower than fp32 on AVX2-only CPUs: commands people copy use `auto` (the default)."""
    for path in [ROOT / "Makefile", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"--mixed_precision[ =]bf16", text), f"{path.name} hard-codes --mixed_precision bf16"
        assert not re.search(r"--torch_dtype[ =]bf16", text), f"{path.name} hard-codes --torch_dtype bf16"
