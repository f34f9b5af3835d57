"""`--export_space`: the folder (app.py, requirements.txt, README with Spaces' YAML front matter) is uploaded to the
local test hub, downloaded back, and its app.py, run unchanged as a Space runs it (`python app.py`, the server
address from GRADIO_SERVER_*), loads the pipeline from the hub and answers. The test hub speaks model repos only, so
the Space folder travels in a model repo; the files and the commands are the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from custom_pipelines.app.__main__ import main, parse_args
from tests.app.conftest import free_port, gallery_arrays
from tests.hub.conftest import client_env, point_client
from tests.hub.hub_server import TestHubServer
from tests.test_sample_cli import build_tiny


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with TestHubServer(str(tmp_path_factory.mktemp("app-hub"))) as server:
        yield server


def wait_for_app(url: str, process: subprocess.Popen, log, timeout: float = 120.0):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"app.py did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def test_exported_space_uploads_downloads_and_serves(hub, tmp_path, monkeypatch):
    from gradio_client import Client
    from huggingface_hub import HfApi, snapshot_download

    home = tmp_path / "hf-home"
    point_client(monkeypatch, hub.endpoint, home)
    build_tiny("ddpm").push_to_hub("user/app-ddpm")

    out = tmp_path / "space"
    argv = ["--export_space", str(out), "--pipeline", "user/app-ddpm", "--max_steps", "10", "--max_images", "2"]
    assert main(parse_args(argv)) == str(out)
    assert sorted(os.listdir(out)) == ["README.md", "app.py", "requirements.txt"]
    readme = (out / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == ["user/app-ddpm"]
    import gradio

    assert front["sdk_version"] == gradio.__version__
    requirements = (out / "requirements.txt").read_text().split()
    assert requirements[0].startswith("custom-pipelines") and f"gradio=={gradio.__version__}" in requirements

    api = HfApi(endpoint=hub.endpoint)
    api.create_repo("user/app-ddpm-space", exist_ok=True)
    api.upload_folder(repo_id="user/app-ddpm-space", folder_path=out)
    downloaded = snapshot_download("user/app-ddpm-space", cache_dir=tmp_path / "download")
    for name in ("app.py", "requirements.txt", "README.md"):
        assert open(os.path.join(downloaded, name)).read() == (out / name).read_text()

    port = free_port()
    env = {
        **os.environ,
        **client_env(hub.endpoint, home),
        "GRADIO_SERVER_NAME": "127.0.0.1",  # a Space sets 0.0.0.0 and 7860; app.py reads whatever is set
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = tmp_path / "app.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=downloaded, env=env, stdout=stream, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_app(url, process, log)
        client = Client(url, verbose=False)
        gallery, seed, code, _ = client.predict(seed=5, num_images=2, num_inference_steps=2, api_name="/generate")
        images = gallery_arrays(gallery)
        assert seed == 5 and [image.shape for image in images] == [(8, 8)] * 2  # the tiny model is grayscale
        assert "UnconditionalDiffusionPipeline.from_pretrained('user/app-ddpm')" in code
        assert not np.array_equal(images[0], images[1])
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match=r"the app's --max_steps"):  # the exported limits hold
            client.predict(seed=5, num_images=1, num_inference_steps=11, api_name="/generate")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_export_space_needs_a_repo_id(saved_app_pipeline, tmp_path):
    with pytest.raises(ValueError, match="--pipeline must be a Hub repo id 'owner/name' for --export_space"):
        main(parse_args(["--export_space", str(tmp_path / "out"), "--pipeline", saved_app_pipeline("ddpm")]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max_images", "0"], "--max_images must be a positive integer, got 0"),
        (["--port", "70000"], "--port must be in [1, 65535], got 70000"),
        (["--max_upload_mb", "0"], "--max_upload_mb must be > 0, got 0.0"),
    ],
)
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_args(["--pipeline", "x/y", *argv])


def test_binds_127_0_0_1_by_default():
    assert parse_args(["--pipeline", "x/y"]).host == "127.0.0.1"
