"""Upload a saved pipeline folder: shims first, then one `upload_folder` commit, so no revision of the repo ever
lacks them (diffusers' own `save_pretrained(push_to_hub=True)` uploads before a subclass could add files)."""

from __future__ import annotations

import logging
import os

from .shims import check_shims, foreign_code, write_shims

logger = logging.getLogger(__name__)

# Never part of a pipeline repo: atomic-write leftovers (custom_pipelines.io) and Python caches.
ALWAYS_IGNORED = [".tmp-*", "**/.tmp-*", "__pycache__/**", "**/__pycache__/**", "*.pyc"]


def push_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    ignore_patterns: list[str] | tuple[str, ...] = (),
):
    """Write the shims into `folder`, create `repo_id` if needed and upload the folder as one commit.

    Returns huggingface_hub's `CommitInfo` (a `str`, the commit URL; `.oid` is the new revision's commit hash).
    """
    folder = os.fspath(folder)
    write_shims(folder)
    problems = [p for p in check_shims(folder) if not p.endswith("not a shim custom_pipelines writes")]
    if problems:
        raise ValueError(f"{folder} is not a pipeline folder that loads with every loader: {'; '.join(problems)}")
    foreign = foreign_code(folder)
    if foreign:
        logger.warning(
            f"{folder} carries code that is not a custom_pipelines shim ({', '.join(foreign)}): the pushed repo will "
            "load only with trust_remote_code=True"
        )
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or f"Upload pipeline with custom_pipelines ({os.path.basename(folder)})",
        create_pr=create_pr,
        revision=revision,
        ignore_patterns=[*ALWAYS_IGNORED, *ignore_patterns],
    )
