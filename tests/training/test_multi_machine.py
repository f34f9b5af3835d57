"""Several machines, rehearsed as two one-process "machines" on 127.0.0.1 (gloo): `accelerate launch --num_machines 2
--machine_rank R`, a two-node `torchrun`, and the SLURM script of docs/distributed.md (under stand-in `srun` and
`scontrol`) all train to exactly the weights of the two-process run on one machine."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.processes import (
    REPO,
    free_port,
    launch_two_machines,
    launch_two_processes,
    read_summary,
    start_process_group,
    wait_for_all,
)

SBATCH = REPO / "training" / "slurm" / "train_ddpm.sbatch"


def tiny_args(output_dir: Path) -> list[str]:
    # --mixed_precision no: `auto` could pick bf16 on one CPU kind, fp32 on another; the runs must be comparable
    return [
        "--dataset_name", "digits", "--output_dir", str(output_dir), "--model_config", "ddpm-tiny-8",
        "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "4",
        "--checkpointing_steps", "4", "--validation_steps", "4", "--num_validation_images", "2",
        "--num_inference_steps", "2", "--lr_warmup_steps", "0", "--seed", "0", "--mixed_precision", "no",
        "--report_to", "none",
    ]  # fmt: skip


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The saved pipeline's UNet (EMA weights) and the last checkpoint's raw UNet weights."""
    return {
        "pipeline": load_file(run / "unet" / "diffusion_pytorch_model.safetensors"),
        "checkpoint": load_file(run / "checkpoint-4" / "model.safetensors"),
    }


def assert_bit_identical(run: Path, reference: Path) -> None:
    ours, theirs = weights(run), weights(reference)
    for kind in ours:
        assert ours[kind].keys() == theirs[kind].keys()
        differ = [name for name in ours[kind] if not torch.equal(ours[kind][name], theirs[kind][name])]
        assert not differ, f"{kind}: {len(differ)} of {len(ours[kind])} tensors differ (first: {differ[0]})"


def assert_two_ranks_agree(summary: dict) -> None:
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    ranks = summary["param_checksums"]["unet"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept both ranks' weights identical


@pytest.fixture(scope="module")
def one_machine_two_processes(tmp_path_factory):
    """The reference: `accelerate launch --num_machines 1 --num_processes 2`."""
    run = tmp_path_factory.mktemp("one-machine") / "run"
    summary = launch_two_processes("train_ddpm.py", tiny_args(run), timeout=180)
    assert_two_ranks_agree(summary)
    return run, summary


@pytest.mark.slow
def test_two_machines_train_the_same_weights_as_two_processes_on_one(tmp_path, one_machine_two_processes):
    reference, reference_summary = one_machine_two_processes
    summary = launch_two_machines("train_ddpm.py", tiny_args(tmp_path / "run"), timeout=180)
    assert_two_ranks_agree(summary)
    # same global batch (2 × 8), same shards, same per-rank seeds: the same sums in the same order, bit for bit
    assert summary["param_checksums"] == reference_summary["param_checksums"]
    assert_bit_identical(tmp_path / "run", reference)
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint-4").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]  # each machine's rank wrote its own RNG state into the one (shared) output folder


@pytest.mark.slow
def test_two_node_torchrun_trains_the_same_weights(tmp_path, one_machine_two_processes):
    """Our scripts need no accelerate launcher: the Accelerator reads torchrun's RANK / WORLD_SIZE / MASTER_ADDR."""
    reference, reference_summary = one_machine_two_processes
    summary = launch_two_machines("train_ddpm.py", tiny_args(tmp_path / "run"), timeout=180, launcher="torchrun")
    assert_two_ranks_agree(summary)
    assert summary["param_checksums"] == reference_summary["param_checksums"]
    assert_bit_identical(tmp_path / "run", reference)


# Stand-ins for SLURM's commands: `srun CMD` runs CMD once per node with that node's SLURM_NODEID (here all on this
# host, in the background), `scontrol show hostnames LIST` lists the allocation's hosts.
FAKE_SRUN = """\
#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
FAKE_SCONTROL = """\
#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] || { echo "scontrol stand-in: only 'show hostnames'" >&2; exit 2; }
tr ',' '\\n' <<< "$3"
"""


@pytest.mark.slow
def test_the_slurm_script_trains_the_same_weights_on_two_nodes(tmp_path, one_machine_two_processes):
    reference, reference_summary = one_machine_two_processes
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    run = tmp_path / "run"
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "127.0.0.1",  # the first "node" hosts the rendezvous
        "SLURM_JOB_ID": "1",
        "MAIN_PROCESS_PORT": str(free_port()),
        "GPUS_PER_NODE": "1",
        "ACCELERATE_USE_CPU": "1",  # the rehearsal's only change: CPU processes (gloo) instead of GPUs
    }
    started = start_process_group(["bash", str(SBATCH), *tiny_args(run), "--ddp_timeout", "120"], **env)
    wait_for_all([started], timeout=180)
    summary = read_summary(tiny_args(run))
    assert_two_ranks_agree(summary)
    assert summary["param_checksums"] == reference_summary["param_checksums"]
    assert_bit_identical(run, reference)


def test_the_doc_shows_the_slurm_script_as_shipped():
    """docs/distributed.md holds training/slurm/train_ddpm.sbatch verbatim, and the script parses."""
    doc = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(#!/bin/bash\n.*?)```", doc, flags=re.S)
    assert blocks == [SBATCH.read_text(encoding="utf-8")]
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_the_slurm_script_passes_its_arguments_to_the_training_script(tmp_path):
    """Without training: `accelerate` is a stand-in that prints the command each "node" would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # one write per line: the "nodes" run side by side, and two printf calls of one node could interleave with
    # another node's output (a line under PIPE_BUF is written whole)
    fake_accelerate = textwrap.dedent("""\
        #!/bin/bash
        line="node $SLURM_NODEID: accelerate"; for arg in "$@"; do line+=" [$arg]"; done; echo "$line"
    """)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("accelerate", fake_accelerate)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "gpu-a,gpu-b,gpu-c",
           "SLURM_JOB_ID": "4242"}  # fmt: skip
    result = subprocess.run(
        ["bash", str(SBATCH), "--output_dir", "/shared/runs/a b", "--max_train_steps", "10"],
        capture_output=True, text=True, env=env, timeout=30, check=True,
    )  # fmt: skip
    expected = (
        "launch --multi_gpu --num_machines 3 --num_processes 24 --machine_rank {rank} --main_process_ip gpu-a "
        "--main_process_port 24242 --mixed_precision no --dynamo_backend no training/train_ddpm.py "
        "--resume_from_checkpoint latest --output_dir"
    ).split() + ["/shared/runs/a b", "--max_train_steps", "10"]
    lines = sorted(result.stdout.splitlines())
    assert lines == [
        f"node {rank}: accelerate" + "".join(f" [{arg}]" for arg in expected).format(rank=rank) for rank in range(3)
    ]


@pytest.mark.slow
def test_too_few_examples_for_the_per_process_batch_is_a_clear_error(tmp_path):
    from tests.training.processes import launch_two_processes

    argv = ["--dataset_name", "digits", "--model_config", "ddpm-tiny-8", "--resolution", "8", "--max_train_samples",
            "64", "--train_batch_size", "64", "--max_train_steps", "2", "--mixed_precision", "no", "--output_dir",
            str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(AssertionError, match=r"--train_batch_size 64 × 2 process\(es\) needs at least 128"):
        launch_two_processes("train_ddpm.py", argv)
