"""What a person looks at after training: sample grids, a loss curve, the model card; and the optional Hub push."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from custom_pipelines.io import atomic_path

METRICS_FILE = "metrics.jsonl"


def image_grid(images: torch.Tensor, nrow: int | None = None, min_tile: int = 64) -> Image.Image:
    """[N, C, H, W] in [0, 1] → one PIL grid (near-square), 1-pixel separators; C = 1 gives a grayscale grid.

    Tiles smaller than `min_tile` pixels are enlarged by an integer nearest-neighbour factor, so a grid of 16×16
    digits is something a person can look at.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    scale = max(1, -(-min_tile // max(images.shape[-2:])))
    if scale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i, img in enumerate(images.float().clamp(0, 1).cpu()):
        r, k = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array[..., 0] if c == 1 else array)


class StepTimer:
    """Seconds per optimizer update of this process, from its first update on (compilation, the first batch's
    decoding and allocator warm-up excluded), checkpoints and validation included."""

    def __init__(self):
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def tick(self, step: int) -> None:
        import time

        now = (time.perf_counter(), step)
        self.first = self.first or now
        self.last = now

    def seconds_per_step(self) -> float | None:
        if self.first is None or self.last[1] == self.first[1]:
            return None
        return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux: `ru_maxrss` in KiB), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def append_metrics(output_dir: str, step: int, logs: dict) -> None:
    with open(os.path.join(output_dir, METRICS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **logs}) + "\n")


def read_metrics(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(output_dir: str, filename: str = "loss_curve.png") -> str | None:
    """Plot every logged `*loss*` series (raw and a moving average) against the step; returns the PNG path."""
    rows = read_metrics(output_dir)
    keys = sorted({k for row in rows for k in row if "loss" in k or k == "eval/fid"})
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        steps = np.array([r["step"] for r in rows if key in r])
        values = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        ax.plot(steps, values, alpha=0.35, lw=0.8, label=key)
        window = max(1, len(values) // 20)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, lw=1.6, label=f"{key} (moving avg {window})")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        if values.size and np.all(values > 0) and values.max() / max(values.min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output_dir, filename)
    with atomic_path(path, suffix=os.path.splitext(filename)[1]) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


class Code(str):
    """A value of `ModelCardInfo.example_call_kwargs` written into the usage snippet as code (a variable name or an
    expression the snippet's `example_setup` defines), not as its repr."""

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class ModelCardInfo:
    """What the model card says about a run: built from the pipeline and the script that really ran."""

    family: str
    pipeline_class: str
    description: str = ""
    script: str | None = None  # the training script's __file__
    example_call_kwargs: dict = field(default_factory=dict)  # the usage snippet's pipeline call
    example_setup: str = ""  # code lines before the call (e.g. making the input image a `Code` kwarg names)
    uses_generator: bool = True  # False for a deterministic pipeline (super-resolution, translation)

    def usage_snippet(self, repo_id: str) -> str:
        kwargs = [f"{k}={v!r}" for k, v in self.example_call_kwargs.items()]
        call = ", ".join([*kwargs, "generator=generator"] if self.uses_generator else kwargs)
        setup = self.example_setup.rstrip("\n") + "\n" if self.example_setup else ""
        return (
            ("import torch\n" if self.uses_generator else "")
            + f"from custom_pipelines import {self.pipeline_class}\n\n"
            f"pipe = {self.pipeline_class}.from_pretrained({repo_id!r})\n"
            + ("generator = torch.Generator().manual_seed(0)\n" if self.uses_generator else "")
            + setup
            + f"images = pipe({call}).images\n"
            'images[0].save("sample.png")\n'
        )

    def training_command(self) -> str:
        if self.script is None:
            return "Trained with `custom_pipelines`."
        stem = os.path.splitext(os.path.basename(self.script))[0]
        return (
            f"Trained with `accelerate launch training/{stem}.py` from a clone of `custom_pipelines` (installed: "
            f"`accelerate launch -m custom_pipelines.scripts.{stem}`) and the flags below."
        )


def write_model_card(output_dir: str, card: ModelCardInfo, args, tags=()) -> str:
    """README.md with Hub metadata (library_name diffusers, pipeline_tag, tags, datasets, base_model of a fine-tune,
    license), the latest sample grid, how to load and sample it, and the training flags."""

    from custom_pipelines.hub.cards import base_model_of, card_data

    data = card_data(
        card.pipeline_class,
        tags=[card.family, *tags],
        datasets=[args.dataset_name] if getattr(args, "dataset_name", None) else None,
        base_model=base_model_of(getattr(args, "pretrained_model_name_or_path", None)),
        license="apache-2.0",
    )
    grid = latest_sample_grid(output_dir)
    samples = f"![samples]({grid})\n" if grid else ""
    content = f"""---
{data.to_yaml()}
---

# {os.path.basename(os.path.abspath(output_dir))}

{card.description}

{samples}
## Use

```python
{card.usage_snippet(args.hub_model_id or output_dir)}```

## Training

{card.training_command()} Loss curve: `loss_curve.png`; sample grids per validation step: `samples/`; TensorBoard
logs: `logs/`.

{flags_table(args)}
"""
    return save_card(output_dir, content)


def flags_table(args) -> str:
    """A card's table of the run's flags (the token left out)."""
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(vars(args).items()) if k != "hub_token")
    return f"| flag | value |\n|---|---|\n{rows}"


def save_card(output_dir: str, content: str) -> str:
    """`content` as `output_dir/README.md` (huggingface_hub's ModelCard, written atomically); the path."""
    from huggingface_hub import ModelCard

    path = os.path.join(output_dir, "README.md")
    with atomic_path(path, suffix=".md") as tmp:
        ModelCard(content).save(tmp)
    return path


def latest_sample_grid(output_dir: str) -> str | None:
    """The grid the card shows, relative to `output_dir`: `samples.png` if present, else the last `samples/` one."""
    if os.path.isfile(os.path.join(output_dir, "samples.png")):
        return "samples.png"
    folder = os.path.join(output_dir, "samples")
    grids = sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []
    return f"samples/{grids[-1]}" if grids else None


def push_folder_to_hub(output_dir: str, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the final pipeline of a run (not checkpoints, logs or temp files) as one commit, shims included
    (custom_pipelines.hub.push); creates the repo if needed. Returns the commit URL."""
    from custom_pipelines.hub.push import TRAINING_RUN_IGNORED, push_pipeline_folder

    info = push_pipeline_folder(
        output_dir,
        repo_id,
        token=token,
        private=private,
        commit_message="Upload pipeline trained with custom_pipelines",
        ignore_patterns=TRAINING_RUN_IGNORED,
    )
    return str(info)
