"""Real servers for the hub tests, on 127.0.0.1 and free ports, started once per session and shut down after:

- `test_hub`: tests/hub/hub_server.py, which accepts pushes (huggingface_hub's real upload client) and serves pulls;
- `olah_hub`: olah, a third-party self-hosted Hub mirror (PyPI `olah`), serving the git repos the test hub stores
  (`mirrors-path`, `offline = true`): a push-then-pull through two independent server implementations.

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported, which in a whole-suite run is long
before this file. Subprocesses get them in their environment (`client_env`); in this process `point_client`
sets the module attributes those variables became (the list below is all that loading and pushing read).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.hub.hub_server import TestHubServer
from tests.hub.tiny_pipelines import KINDS, PIPELINE_CLASSES, SAMPLE_KWARGS, build, sample, state_dicts

REPO_ROOT = Path(__file__).resolve().parents[2]


def client_env(endpoint: str, home: str | os.PathLike, offline: bool = False) -> dict[str, str]:
    """Environment of a huggingface_hub client using `endpoint`, caching under `home`, not huggingface.co."""
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": os.fspath(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_XET": "1",  # hf_xet is installed and would upload through xet, which neither server speaks
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_TOKEN": "hf_test_token",  # servers ignore it; keeps the client from reading a real token file
    }


def point_client(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: str | os.PathLike, offline: bool = False):
    """Point this process's huggingface_hub and diffusers at `endpoint` / `home` (undone with `monkeypatch`)."""
    import diffusers.utils.dynamic_modules_utils as dynamic_modules
    from huggingface_hub import constants, hf_api

    home = os.fspath(home)
    for key, value in client_env(endpoint, home, offline).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", home)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(home, "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", os.path.join(home, "token"))
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # the module-level HfApi behind model_info, upload_folder
    # diffusers copies trust_remote_code modules under HF_MODULES_CACHE and puts that folder on sys.path
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", os.path.join(home, "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


@dataclass
class Server:
    endpoint: str
    git_root: Path  # the test hub's store (bare git repos); olah mirrors it
    requests: list = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(endpoint: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"olah exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])), timeout=2.0).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"olah did not answer on {endpoint} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def test_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("test-hub")
    with TestHubServer(str(root)) as hub:
        yield Server(hub.endpoint, root, hub.requests)


@pytest.fixture(scope="session")
def olah_hub(test_hub, tmp_path_factory):
    """olah serving the test hub's git repos read-only. Its offline mode answers a revision-less repo-info request
    (`GET /api/models/{repo}`, what diffusers sends for `revision=None`) with 401, so path-1 loads through it pass
    `revision="main"`; our loaders always send a revision."""
    if shutil.which("olah-cli", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("olah is not installed (it is in the `test` extra: pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("olah")
    port = free_port()
    config = folder / "olah.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'repos-path = "{folder / "cache"}"\n'
        f'mirrors-path = ["{test_hub.git_root}"]\n'
        f'mirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\n'
        "metadata-cache-ttl = 0\n"  # a second push must show at once
        "[accessibility]\n"
        "offline = true\n"
    )
    log = folder / "olah.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "olah-cli"), "-c", str(config), "--log-path", str(folder)],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(endpoint, process, log)
        yield Server(endpoint, test_hub.git_root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def private_modules_cache(monkeypatch, tmp_path_factory):
    """diffusers copies the shims it runs (trust_remote_code) into HF_MODULES_CACHE, by default under ~/.cache."""
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path_factory.getbasetemp() / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def use_hub(monkeypatch, tmp_path):
    """`use_hub(server, offline=False, home=None)` points this process's client at `server` (a fresh cache unless
    `home` is given); returns HF_HOME."""

    def point(server: Server, offline: bool = False, home: Path | None = None) -> Path:
        home = home or tmp_path / "hf-home"
        point_client(monkeypatch, server.endpoint, home, offline)
        return home

    return point


@dataclass
class Pushed:
    """One tiny pipeline pushed to the test hub, and what a faithful pull must give back."""

    kind: str
    repo_id: str
    commit: str
    folder: Path  # the same pipeline saved locally
    reference: np.ndarray  # sampled from the pipeline loaded back from `folder` (seed 0)
    tensors: dict  # every weight and buffer of the pipeline that was pushed


@pytest.fixture(scope="session")
def pushed(test_hub, tmp_path_factory) -> dict[str, Pushed]:
    """Every pipeline type pushed once with `pipe.push_to_hub("user/tiny-<kind>")`."""
    root = tmp_path_factory.mktemp("pushed")
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_client(monkeypatch, test_hub.endpoint, root / "hf-home")
        for kind in KINDS:
            pipe = build(kind)
            info = pipe.push_to_hub(f"user/tiny-{kind}")
            pipe.save_pretrained(root / kind)
            reference = sample(PIPELINE_CLASSES[kind].from_pretrained(root / kind), kind)
            tensors = {k: v.clone() for k, v in state_dicts(pipe).items()}
            out[kind] = Pushed(kind, f"user/tiny-{kind}", info.oid, root / kind, reference, tensors)
    return out


@pytest.fixture(scope="session")
def path1_results(pushed, olah_hub, tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Path 1 for every type, from the local folder and by repo id through olah, in ONE fresh process (`python -c`
    costs seconds here) that imports nothing of ours: diffusers finds our classes through the shims alone.
    `{(kind, "folder" | "olah"): {"class": "module.Class", "images": array}}`."""
    folder = tmp_path_factory.mktemp("path1")
    jobs = []
    for kind, repo in pushed.items():
        for source, name, revision in (("folder", str(repo.folder), None), ("olah", repo.repo_id, "main")):
            out = str(folder / f"{kind}-{source}.npy")
            jobs.append({"key": [kind, source], "source": name, "revision": revision, "out": out})
            jobs[-1]["kwargs"] = SAMPLE_KWARGS[kind]
    env = {**os.environ, **client_env(olah_hub.endpoint, folder / "hf-home"), "PYTHONPATH": str(REPO_ROOT)}
    env["OMP_NUM_THREADS"] = "1"
    script = Path(__file__).with_name("fresh_process_load.py")
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(jobs)], cwd=folder, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {tuple(r["key"]): {"class": r["class"], "images": np.load(r["out"])} for r in lines}
