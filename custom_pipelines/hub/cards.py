"""Model-card metadata the Hub reads (library, task, tags, base model) and the card `push_to_hub` writes."""

from __future__ import annotations

import os
import re

# The Hub's task ids. It has no class-conditional generation task: a class id is not text, so class-conditional
# pipelines are listed with the unconditional ones (as diffusers' DiT repos are).
PIPELINE_TAGS = {
    "UnconditionalDiffusionPipeline": "unconditional-image-generation",
    "ClassConditionalDiffusionPipeline": "unconditional-image-generation",
    "LatentDiffusionPipeline": "unconditional-image-generation",
    "StyleGANPipeline": "unconditional-image-generation",
    "GANPipeline": "unconditional-image-generation",
    "DiffusionImg2ImgPipeline": "image-to-image",
    "LatentImg2ImgPipeline": "image-to-image",
    "SuperResolutionPipeline": "image-to-image",
    "CycleGANPipeline": "image-to-image",
}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def pipeline_tag(pipeline_class: str) -> str | None:
    """The Hub task of one of our pipeline classes; None for a class we do not know (the card then has no task)."""
    return PIPELINE_TAGS.get(pipeline_class)


def base_model_of(pretrained_model_name_or_path: str | os.PathLike | None) -> str | None:
    """The `base_model` of a fine-tune: the Hub repo id it started from; None for a local folder or no parent."""
    if not pretrained_model_name_or_path:
        return None
    name = os.fspath(pretrained_model_name_or_path)
    if os.path.exists(name) or not _REPO_ID.fullmatch(name):
        return None
    return name


def card_data(pipeline_class: str, *, tags=(), datasets=None, base_model=None, license=None):
    """`ModelCardData` with the Hub's conventions: library_name diffusers, the task, our tags, datasets, base model."""
    from huggingface_hub import ModelCardData

    return ModelCardData(
        library_name="diffusers",
        pipeline_tag=pipeline_tag(pipeline_class),
        license=license,
        tags=list(dict.fromkeys(["custom_pipelines", "diffusers", pipeline_class, *tags])),
        datasets=datasets,
        base_model=base_model,
    )


def loading_snippet(pipeline_class: str, repo_id: str) -> str:
    """The three ways to load `repo_id` (docs/hub.md), as the Python block of a model card."""
    return (
        "```python\n"
        "# needs `pip install custom-pipelines`: the repo's .py files only import it\n"
        "from diffusers import DiffusionPipeline\n"
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)\n\n'
        "# or, without trust_remote_code (allowed while the repo's only code is custom_pipelines' own shims)\n"
        f"from custom_pipelines import {pipeline_class}, load_pipeline\n"
        f'pipe = {pipeline_class}.from_pretrained("{repo_id}")\n'
        f'pipe = load_pipeline("{repo_id}")\n'
        "```\n"
    )


def write_pipeline_card(folder: str | os.PathLike, pipeline_class: str, repo_id: str) -> str:
    """README.md for `pipe.push_to_hub`: metadata plus how to load it. Returns its path."""
    from huggingface_hub import ModelCard

    content = (
        f"---\n{card_data(pipeline_class).to_yaml()}\n---\n\n# {repo_id}\n\n"
        f"A `{pipeline_class}` saved with `custom_pipelines`: weights as safetensors, configs as JSON and "
        "one-line import shims.\n\n## Use\n\n" + loading_snippet(pipeline_class, repo_id)
    )
    path = os.path.join(folder, "README.md")
    ModelCard(content).save(path)
    return path
