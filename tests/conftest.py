import os
import tempfile

# Nothing may reach the network during tests: datasets and huggingface_hub both honour these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# diffusers copies the pipeline.py shims it runs into HF_MODULES_CACHE (read at import): one folder per test
# process, so parallel workers never race on ~/.cache/huggingface/modules
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf-modules-"))
# --cache_latents keeps its shards for later runs: in a folder of this test process, never the user's HF_HOME
os.environ.setdefault("CUSTOM_PIPELINES_LATENT_CACHE", tempfile.mkdtemp(prefix="latent-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

# Two threads on two cores slow down ~3x as soon as anything else runs (xdist workers, subprocesses).
torch.set_num_threads(1)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; an in-process training run starts and ends clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
