"""Load any of our pipelines (or a stock diffusers one) from a local folder or a Hub repo id.

`DiffusionPipeline.from_pretrained` resolves `_class_name` only inside the diffusers namespace, so a folder saved
by one of our pipelines needs either `OurPipeline.from_pretrained` or this helper, which reads `model_index.json`
first and dispatches to the right class.
"""

from __future__ import annotations

import json
import os

import diffusers
from huggingface_hub import hf_hub_download


def read_model_index(pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs) -> dict:
    """Return the parsed `model_index.json` of a local pipeline folder or a Hub repo id."""
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(path):
        index_file = os.path.join(path, "model_index.json")
        if not os.path.isfile(index_file):
            raise ValueError(f"pretrained_model_name_or_path={path!r} is a folder without a model_index.json")
    else:
        try:
            index_file = hf_hub_download(path, "model_index.json", **hub_kwargs)
        except Exception as err:  # HFValidationError, offline/not-found errors: say what the argument must be
            raise ValueError(
                f"pretrained_model_name_or_path={path!r} is neither a local pipeline folder nor a Hub repo id whose "
                f"model_index.json can be fetched ({type(err).__name__}: {err})"
            ) from err
    with open(index_file, encoding="utf-8") as f:
        return json.load(f)


def resolve_pipeline_class(class_name: str | list[str]) -> type[diffusers.DiffusionPipeline]:
    """Find a pipeline class by the `_class_name` recorded in model_index.json (ours first, then diffusers')."""
    import custom_pipelines

    if isinstance(class_name, (list, tuple)):  # ["pipeline", "OurPipeline"] written for trust_remote_code shims
        class_name = class_name[-1]
    for namespace in (custom_pipelines, diffusers):
        cls = getattr(namespace, class_name, None)
        if isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline):
            return cls
    raise ValueError(
        f"model_index.json names _class_name={class_name!r}, which neither custom_pipelines nor diffusers has"
    )


def load_pipeline(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> diffusers.DiffusionPipeline:
    """`from_pretrained` for a folder or repo of any of our pipelines, without knowing its class in advance.

    Keyword arguments go to the class's `from_pretrained` (e.g. `torch_dtype`, `revision`, `cache_dir`).
    """
    hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
    index = read_model_index(pretrained_model_name_or_path, **hub_kwargs)
    if "_class_name" not in index:
        raise ValueError(f"model_index.json of {pretrained_model_name_or_path!r} has no _class_name")
    cls = resolve_pipeline_class(index["_class_name"])
    return cls.from_pretrained(pretrained_model_name_or_path, **kwargs)
