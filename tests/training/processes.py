"""Training scripts as real processes: one Python process (`run_script`, forked from a server that has the libraries
imported), or two CPU processes under `accelerate launch` (`launch_two_processes`) or two one-process "machines" on
127.0.0.1 (`launch_two_machines`), each with the repo on PYTHONPATH, one OpenMP thread and the Hub off."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Literal

REPO = Path(__file__).resolve().parents[2]


def script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", **extra}  # fmt: skip
    return env


def run_script(script: str, args: list[str], fault: str | None = None, timeout: int = 600):
    """`python training/<script> args` (with `CUSTOM_PIPELINES_FAULT=fault` when given); the CompletedProcess.

    The process is forked from `script_server` (libraries already imported), unless `CUSTOM_PIPELINES_FORK_SERVER=0`
    asks for a plain `subprocess.run` of the same command."""
    env = script_env()
    env.pop("CUSTOM_PIPELINES_FAULT", None)
    if fault:
        env["CUSTOM_PIPELINES_FAULT"] = fault
    cmd = [sys.executable, str(REPO / "training" / script), *args]
    if os.environ.get("CUSTOM_PIPELINES_FORK_SERVER", "1") == "0":
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        request = {"script": cmd[1], "args": args, "env": env, "cwd": str(REPO), "stdout": str(out),
                   "stderr": str(err), "timeout": timeout}  # fmt: skip
        reply = _ScriptServer.get().request(request)
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    if reply.get("timed_out"):
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(cmd, reply["returncode"], stdout, stderr)


class _ScriptServer:
    """One `script_server` process per test process, started on first use, ended when its stdin closes."""

    _instance: _ScriptServer | None = None

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="script-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.training.script_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=script_env(),
        )  # fmt: skip
        self._reply()  # {"ready": true} once the libraries are imported
        atexit.register(self.close)

    @classmethod
    def get(cls) -> _ScriptServer:
        if cls._instance is None or cls._instance.process.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def request(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"script_server died: {Path(self.log.name).read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        self.log.close()
        os.unlink(self.log.name)


def launch_two_processes(script: str, args: list[str], timeout: int = 600) -> dict:
    """`accelerate launch` of training/<script> on two CPU processes (gloo); asserts success and returns the run's
    training_summary.json. `ACCELERATE_USE_CPU` and `--multi_gpu` give two CPU ranks (`--cpu` alone starts one)."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO / "training" / script), *args, "--ddp_timeout", "120",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=script_env(ACCELERATE_USE_CPU="1"), timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output_dir = Path(args[len(args) - 1 - args[::-1].index("--output_dir") + 1])  # the last --output_dir wins
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["world_size"] == 2, "accelerate started one process: the --cpu trap"
    return summary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it; taken again at once by the launcher)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_machines(
    script: str, args: list[str], timeout: int = 600, launcher: Literal["accelerate", "torchrun"] = "accelerate"
) -> dict:
    """Multi-node rehearsal on one host: two launchers, one per "machine", each starting one CPU process (gloo), that
    meet at 127.0.0.1 — `accelerate launch --num_machines 2 --machine_rank R` (static rendezvous) or `torchrun
    --nnodes 2 --rdzv_backend c10d` (ranks in order of arrival). Asserts both succeed and returns the run's
    training_summary.json. Both launchers (with their ranks) are killed when either fails or the time runs out, so a
    lone rank never waits for its peer until --ddp_timeout."""
    port = str(free_port())
    if launcher == "accelerate":
        accelerate = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port,
            "--mixed_precision", "no", "--dynamo_backend", "no",
        ]  # fmt: skip
        commands = [[*accelerate, "--machine_rank", str(machine_rank)] for machine_rank in (0, 1)]
    elif launcher == "torchrun":
        torchrun = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "rehearsal",
        ]  # fmt: skip
        commands = [torchrun, torchrun]
    else:
        raise ValueError(f"launcher must be 'accelerate' or 'torchrun', got {launcher!r}")
    script_args = [str(REPO / "training" / script), *args, "--ddp_timeout", "120"]
    launchers = [start_process_group([*command, *script_args], ACCELERATE_USE_CPU="1") for command in commands]
    wait_for_all(launchers, timeout)
    return read_summary(args)


def start_process_group(cmd: list[str], **env: str) -> tuple[subprocess.Popen, IO[str]]:
    """`cmd` in a new process group (so a kill reaches what it starts), its stdout and stderr in a temporary file
    (a pipe nobody reads would block it once full); the process and the file."""
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=script_env(**env), start_new_session=True
    )
    return process, log


def wait_for_all(started: list[tuple[subprocess.Popen, IO[str]]], timeout: float) -> None:
    """Waits until every process has exited; when one fails or `timeout` seconds pass, SIGKILLs the process groups of
    the others. Asserts that all exited with 0, showing the tail of each one's output otherwise."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p, _ in started):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p, _ in started):
                break
            time.sleep(0.2)
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # the group we created: the launcher and its ranks
                process.wait(timeout=30)
    outputs = []
    for index, (process, log) in enumerate(started):
        log.seek(0)
        outputs.append(f"--- launcher {index} (exit {process.returncode}) ---\n{log.read()[-3000:]}")
        log.close()
    assert all(p.returncode == 0 for p, _ in started), "\n".join(outputs)


def read_summary(args: list[str]) -> dict:
    """training_summary.json of the run whose arguments are `args`, checked to come from two processes."""
    output_dir = Path(args[len(args) - 1 - args[::-1].index("--output_dir") + 1])  # the last --output_dir wins
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["world_size"] == 2, "the launchers did not form one run of two processes"
    return summary
