"""Path 1 in a fresh process (run by tests/hub/conftest.py): only diffusers, torch and numpy are imported by hand;
every custom_pipelines class must come in through the repo's shims.

argv[1]: JSON list of jobs `{"key", "source": folder or repo id, "revision", "kwargs", "out": .npy path}`; prints one
JSON line per job with the class diffusers returned.
"""

import json
import sys

import numpy as np
import torch
from diffusers import DiffusionPipeline


def main() -> None:
    torch.set_num_threads(1)
    jobs = json.loads(sys.argv[1])
    assert not any(name.split(".")[0] == "custom_pipelines" for name in sys.modules), "imported ours by hand"
    for job in jobs:
        pipe = DiffusionPipeline.from_pretrained(job["source"], revision=job["revision"], trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(**job["kwargs"], generator=torch.Generator().manual_seed(0), output_type="np").images
        np.save(job["out"], images)
        cls = type(pipe)
        print(json.dumps({"key": job["key"], "out": job["out"], "class": f"{cls.__module__}.{cls.__name__}"}))


if __name__ == "__main__":
    main()
