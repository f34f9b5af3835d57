"""A fork server for training scripts run as real processes (the kill tests start 5 per family).

A fresh `python training/<script>.py` spends most of a tiny run importing torch, diffusers and accelerate (a tiny
train_ddpm run: ≈ 9 s as a plain process, ≈ 2.5 s forked from here). This server imports them once, with one OpenMP
thread and before any parallel region, and checks that it is still single-threaded, so forking is safe. Then it
forks one child per request: a real process with its own pid that runs the script as `__main__` with the request's
argv and environment, writes to its own stdout/stderr files, and can be SIGKILLed like any other. Nothing of one run
reaches the next: each child starts from the server's untouched memory.

Protocol: one JSON request per line on stdin (`script`, `args`, `env`, `cwd`, `stdout`, `stderr`, `timeout`), one
JSON reply per line (`returncode`: the exit status, or −signal as `subprocess` gives it; `timed_out`) on the
server's original stdout. Used by `tests/training/processes.py::run_script`.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import time
import traceback

# Not `datasets` or `sklearn.datasets`: importing either loads pyarrow, which starts its jemalloc background thread,
# and a fork should come from a process with one thread (`preload` checks that it is so).
PRELOAD = ("torch", "torch.utils.tensorboard", "accelerate", "diffusers", "safetensors.torch")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # the lazily imported classes the scripts use (diffusers imports each submodule on first attribute access)
    import diffusers

    for name in ("UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "DiffusionPipeline", "DDPMScheduler"):
        getattr(diffusers, name)
    from diffusers.training_utils import EMAModel  # noqa: F401

    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["main"]
    if len(threads) != 1:
        raise RuntimeError(f"script_server: {len(threads)} threads after the imports; forking needs one")


def run_child(request: dict) -> None:
    """In the forked child: become the script's process, run it, exit with its status (never returns)."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        script = request["script"]
        sys.argv = [script, *request["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script.py` sets it
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - like the interpreter: print the traceback, exit 1
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (logging, TensorBoard writers)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def wait(pid: int, timeout: float) -> dict:
    """The child's status as `subprocess` reports it (−signal when killed); killed and flagged after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"returncode": -signal.SIGKILL, "timed_out": True}
        time.sleep(0.02)


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the server go to stderr, never into the protocol
    preload()
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request)
        replies.write(json.dumps(wait(pid, request["timeout"])) + "\n")


if __name__ == "__main__":
    serve()
