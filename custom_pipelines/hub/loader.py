"""Load any of our pipelines (or a stock diffusers one) from a local folder or a Hub repo id, without
`trust_remote_code` when the only code the folder carries is our own shims.

The three ways in (docs/hub.md):
1. `DiffusionPipeline.from_pretrained(dir_or_repo, trust_remote_code=True)`: diffusers runs the shims
   (`custom_pipelines.hub.shims`), which import our installed classes.
2. `OurPipeline.from_pretrained(...)` / `load_pipeline(...)` without `trust_remote_code`: allowed only when every `.py`
   file of the folder (or of the repo at the resolved commit) is exactly a shim we would write. Then, and only then,
   `trust_remote_code=True` goes to diffusers, pinned to the commit that was checked.
3. Any other code keeps diffusers' gate: a `ValueError` names the file and asks for `trust_remote_code=True`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import diffusers

from .shims import MODEL_INDEX, OUR_LIBRARY, PACKAGE, code_files, foreign_code, read_index
from .validate import check_pipeline_folder

HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
logger = logging.getLogger(__name__)


def resolve_code_snapshot(
    pretrained_model_name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
) -> tuple[Path, str | None]:
    """A local folder → `(folder, None)`; a Hub repo id → `(snapshot, commit)`: the cached snapshot holding its
    model_index.json and every `.py` file at the commit `revision` (default `main`) resolves to.

    Only those small files are fetched, so the code is checked before any weights are downloaded. `revision` is
    always sent (`main` when None): some self-hosted mirrors answer a revision-less repo-info request with 401.
    """
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, MODEL_INDEX)):
            raise ValueError(f"pretrained_model_name_or_path={path!r} is a folder without a {MODEL_INDEX}")
        return Path(path), None
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = revision or "main"
    try:
        folder = Path(
            snapshot_download(
                path,
                revision=revision,
                allow_patterns=[MODEL_INDEX, "*.py"],
                cache_dir=cache_dir,
                token=token,
                local_files_only=bool(local_files_only),
            )
        )
    except RevisionNotFoundError as err:
        raise ValueError(f"revision {revision!r} does not exist in Hub repo {path!r} ({constants.ENDPOINT})") from err
    except RepositoryNotFoundError as err:  # some mirrors (olah offline) answer this for a missing revision too
        what = f"Hub repo {path!r}" + (f" (or its revision {revision!r})" if revision != "main" else "")
        raise ValueError(
            f"pretrained_model_name_or_path={path!r} is not a local folder, and {what} does not exist on "
            f"{constants.ENDPOINT} (or is private: pass token=...)"
        ) from err
    except (HFValidationError, LocalEntryNotFoundError) as err:  # IncompleteSnapshotError is a LocalEntryNotFoundError
        raise ValueError(
            f"pretrained_model_name_or_path={path!r} is neither a local pipeline folder nor a Hub repo id whose "
            f"revision {revision!r} can be fetched or found in the local cache ({type(err).__name__}: {err})"
        ) from err
    if not (folder / MODEL_INDEX).is_file():
        raise ValueError(f"Hub repo {path!r} has no {MODEL_INDEX} at revision {revision!r}: not a pipeline repo")
    return folder, folder.name  # snapshot folders are named by their commit hash


def check_code(pretrained_model_name_or_path: str | os.PathLike, folder: Path) -> bool:
    """Raise unless every `.py` file in `folder` is one of our shims; returns whether it has any (shims need
    diffusers' `trust_remote_code=True` to run, even though they only import our installed package)."""
    foreign = foreign_code(folder)
    if foreign:
        raise ValueError(
            f"{os.fspath(pretrained_model_name_or_path)!r} contains code that custom_pipelines did not write: "
            f"{', '.join(foreign)} (in {folder}). Loading it would run that code: review the file(s), and pass "
            "trust_remote_code=True only if you trust them."
        )
    return bool(code_files(folder))


def import_our_libraries(index: dict) -> None:
    """Import the modules of our package that model_index.json names as component libraries.

    diffusers resolves a library that is not its own from `sys.modules` only (it never imports what a repo names), so a
    folder saved before it carried component shims loads once these installed modules are imported.
    """
    for name, value in index.items():
        if not name.startswith("_") and isinstance(value, (list, tuple)) and len(value) == 2:
            library = value[0]
            if isinstance(library, str) and library.startswith(PACKAGE + ".") and OUR_LIBRARY.fullmatch(library):
                try:
                    importlib.import_module(library)
                except ImportError:
                    pass  # diffusers' own error names the library and the component


def checked_from_pretrained(
    load: Callable[..., diffusers.DiffusionPipeline], pretrained_model_name_or_path: str | os.PathLike, **kwargs
) -> diffusers.DiffusionPipeline:
    """Call diffusers' `from_pretrained` (`load`) with `trust_remote_code=True` only after `check_code` passed on the
    exact commit that is then loaded. A caller's own `trust_remote_code=True` or `custom_pipeline` passes as is."""
    if kwargs.get("trust_remote_code") or kwargs.get("custom_pipeline") is not None:
        return load(pretrained_model_name_or_path, **kwargs)
    kwargs.pop("trust_remote_code", None)
    folder, commit = resolve_code_snapshot(
        pretrained_model_name_or_path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    )
    check_pipeline_folder(folder, kwargs.get("use_safetensors"))  # a broken file first: the error names it
    has_shims = check_code(pretrained_model_name_or_path, folder)
    import_our_libraries(read_index(folder))
    _check_repo_files(folder, kwargs, os.fspath(pretrained_model_name_or_path), commit)
    return load_checked_snapshot(load, pretrained_model_name_or_path, folder, commit, has_shims, **kwargs)


def _check_repo_files(folder: Path, kwargs: dict, repo_id: str, commit: str | None) -> None:
    """For a Hub repo, whose weights are not downloaded yet, refuse pickled weights from its file list at `commit`
    (unless `use_safetensors=False`): diffusers' own default would fall back to them silently."""
    from huggingface_hub import constants

    from .validate import check_repo_files

    if commit is not None and not (constants.HF_HUB_OFFLINE or kwargs.get("local_files_only")):
        from huggingface_hub import HfApi

        try:
            files = HfApi().list_repo_files(repo_id, revision=commit, token=kwargs.get("token"))
        except _hub_unreachable_errors():
            files = None  # the offline path below loads the cached snapshot, which check_pipeline_folder reads
        if files is not None:
            check_repo_files(repo_id, files, read_index(folder), kwargs.get("use_safetensors"))


def load_checked_snapshot(
    load: Callable[..., diffusers.DiffusionPipeline],
    pretrained_model_name_or_path: str | os.PathLike,
    folder: Path,
    commit: str | None,
    has_shims: bool,
    **kwargs,
) -> diffusers.DiffusionPipeline:
    """`load` a checked folder, or a repo pinned to the checked `commit` (the files diffusers runs are the ones
    checked), with `trust_remote_code` if it has shims.

    Offline (HF_HUB_OFFLINE, `local_files_only`, or the Hub unreachable) a repo loads from its cached snapshot folder:
    diffusers 0.42's `get_cached_module_file` asks the Hub for the commit of a repo's `pipeline.py` even when that
    commit is cached, so loading by repo id fails offline (transformers fixed the same in its PR #22661).
    """
    from huggingface_hub import constants

    if has_shims:
        kwargs["trust_remote_code"] = True
    if commit is None:
        return load(pretrained_model_name_or_path, **kwargs)
    kwargs["revision"] = commit
    if not (constants.HF_HUB_OFFLINE or kwargs.get("local_files_only")):
        try:
            return load(pretrained_model_name_or_path, **kwargs)
        except _hub_unreachable_errors() as err:
            logger.warning(f"the Hub cannot be reached ({type(err).__name__}); loading the cached snapshot {folder}")
    local_kwargs = {k: v for k, v in kwargs.items() if k not in (*HUB_KWARGS, "force_download", "proxies")}
    pipe = load(str(folder), **local_kwargs)
    pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
    return pipe


def _hub_unreachable_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises when the Hub cannot be reached (its HTTP client changed across versions)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        from huggingface_hub.utils import httpx  # huggingface_hub >= 1.0 speaks httpx (or its successor) ...

        return OfflineModeIsEnabled, httpx.TransportError
    except ImportError:  # ... older releases requests
        import requests

        return OfflineModeIsEnabled, requests.ConnectionError, requests.Timeout


def read_model_index(pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs) -> dict:
    """Return the parsed `model_index.json` of a local pipeline folder or a Hub repo id."""
    folder, _ = resolve_code_snapshot(pretrained_model_name_or_path, **hub_kwargs)
    return read_index(folder)


def resolve_pipeline_class(class_name: str | list[str]) -> type[diffusers.DiffusionPipeline]:
    """Find a pipeline class by the `_class_name` recorded in model_index.json (ours first, then diffusers')."""
    import custom_pipelines

    if isinstance(class_name, (list, tuple)):  # ["pipeline", "OurPipeline"]: the shim pair
        class_name = class_name[-1]
    for namespace in (custom_pipelines, diffusers):
        cls = getattr(namespace, class_name, None)
        if isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline):
            return cls
    raise ValueError(
        f"model_index.json names _class_name={class_name!r}, which neither custom_pipelines nor diffusers has"
    )


def load_pipeline(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> diffusers.DiffusionPipeline:
    """`from_pretrained` for a folder or repo of any of our pipelines (or a stock diffusers one), without knowing its
    class in advance. Without `trust_remote_code` the folder may carry no code but our shims (module docstring).

    Keyword arguments go to the class's `from_pretrained` (e.g. `torch_dtype`, `revision`, `cache_dir`).
    """
    trust_remote_code = kwargs.pop("trust_remote_code", False)
    folder, commit = resolve_code_snapshot(
        pretrained_model_name_or_path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    )
    check_pipeline_folder(folder, kwargs.get("use_safetensors"))
    index = read_index(folder)
    if "_class_name" not in index:
        raise ValueError(f"model_index.json of {os.fspath(pretrained_model_name_or_path)!r} has no _class_name")
    cls = resolve_pipeline_class(index["_class_name"])
    if trust_remote_code or kwargs.get("custom_pipeline") is not None:  # the caller's decision, diffusers' gate
        return cls.from_pretrained(pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    has_shims = check_code(pretrained_model_name_or_path, folder)
    import_our_libraries(index)
    _check_repo_files(folder, kwargs, os.fspath(pretrained_model_name_or_path), commit)
    return load_checked_snapshot(
        cls.from_pretrained, pretrained_model_name_or_path, folder, commit, has_shims, **kwargs
    )
