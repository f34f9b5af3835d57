"""The training scripts, one per family, thin layers on the trainer core `custom_pipelines.training`.

From a clone run them as files (`accelerate launch training/train_ddpm.py ...`), as diffusers' examples are run.
The wheel installs this folder as `custom_pipelines.scripts` (`accelerate launch -m
custom_pipelines.scripts.train_ddpm` or the console command `custom-pipelines-train-ddpm`), so nothing lands under
a generic top-level name.
"""
