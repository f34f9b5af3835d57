"""`HubPipelineMixin`: what every pipeline of ours adds to diffusers' save / load / push.

- `save_pretrained` writes the shims after diffusers has saved (custom_pipelines.hub.shims), so a saved folder
  loads with `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`;
- `from_pretrained` loads folders and repos whose only code is our shims without `trust_remote_code`
  (custom_pipelines.hub.loader.checked_from_pretrained);
- `push_to_hub` saves into a temporary folder, adds shims and a model card, and uploads it as one commit.

Listed before `DiffusionPipeline` in the bases: `class XPipeline(HubPipelineMixin, DiffusionPipeline)`.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

INDEX_FILE = "model_index.json"
CONFIG_FILE = "config.json"


class HubPipelineMixin:
    """Shims on save, the shim-only code check on load, and a shims-first push for a `DiffusionPipeline`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """diffusers' `from_pretrained`; without `trust_remote_code` it accepts a folder or repo only if every `.py`
        file in it is one of our one-line shims (else a ValueError names the file). Arguments are diffusers'."""
        from .loader import checked_from_pretrained

        return checked_from_pretrained(super().from_pretrained, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """diffusers' `save_pretrained`, then the shims, written into a hidden staging folder and moved into place with
        model_index.json last: a crash mid-save never leaves a half-written pipeline (see `_move_into_place`). With
        `push_to_hub=True` the finished folder is uploaded (`repo_id` defaults to the folder's name; `token`,
        `private`, `commit_message`, `create_pr` as diffusers')."""
        from custom_pipelines.faults import fault_point

        from .shims import write_shims

        push_keys = ("repo_id", "token", "private", "commit_message", "create_pr")
        push_kwargs = {key: kwargs.pop(key) for key in push_keys if key in kwargs}
        os.makedirs(save_directory, exist_ok=True)
        for debris in glob.glob(os.path.join(glob.escape(os.fspath(save_directory)), ".tmp-save-*")):
            shutil.rmtree(debris, ignore_errors=True)  # the staging folder of a save that was killed
        staging = tempfile.mkdtemp(prefix=".tmp-save-", dir=save_directory)
        try:
            super().save_pretrained(
                staging,
                safe_serialization=safe_serialization,
                variant=variant,
                max_shard_size=max_shard_size,
                **kwargs,
            )
            write_shims(staging)
            fault_point("save")
            _move_into_place(staging, save_directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            from .push import push_pipeline_folder

            repo_id = push_kwargs.pop("repo_id", os.path.basename(os.path.abspath(save_directory)))
            push_pipeline_folder(save_directory, repo_id, **push_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        revision: str | None = None,
    ):
        """Upload the pipeline (safetensors weights, JSON configs, shims, a model card) to `repo_id` as one commit.

        Args:
            repo_id (`str`): `namespace/name` on the Hub (`HF_ENDPOINT`); created if missing.
            commit_message (`str`, *optional*): defaults to `Upload <PipelineClass>`.
            private (`bool`, *optional*): visibility of a newly created repo.
            token (`str`, *optional*): defaults to the logged-in token.
            create_pr (`bool`, defaults to False): open a pull request instead of committing to the branch.
            safe_serialization (`bool`, defaults to True), variant (`str`, *optional*): as `save_pretrained`.
            revision (`str`, *optional*): the branch to commit to (default `main`).

        Returns:
            `CommitInfo`: the commit URL (a `str`); `.oid` is the new revision's commit hash.
        """
        from .cards import write_pipeline_card
        from .push import push_pipeline_folder

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            if not _has_card(repo_id, token, revision):
                write_pipeline_card(folder, type(self).__name__, repo_id)
            return push_pipeline_folder(
                folder,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                create_pr=create_pr,
                revision=revision,
            )


def save_model_atomically(model, save_directory: str | os.PathLike, **kwargs) -> None:
    """`model.save_pretrained(save_directory)` (a diffusers ModelMixin saved as a folder of its own, e.g. a trained
    VAE) staged and moved into place like a pipeline: config.json, which makes the folder a model, goes first and
    comes back last, so a crash leaves the old model or a folder without config.json, never new weights under an
    old config. Other files in the folder are kept."""
    from custom_pipelines.faults import fault_point

    os.makedirs(save_directory, exist_ok=True)
    for debris in glob.glob(os.path.join(glob.escape(os.fspath(save_directory)), ".tmp-save-*")):
        shutil.rmtree(debris, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=".tmp-save-", dir=save_directory)
    try:
        model.save_pretrained(staging, **kwargs)
        fault_point("save")
        _move_into_place(staging, os.fspath(save_directory), marker=CONFIG_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: str, save_directory: str, marker: str = INDEX_FILE) -> None:
    """Move a complete save from `staging` into `save_directory` so that a crash at any moment leaves either the old
    pipeline, or a folder without model_index.json (which no loader takes for a pipeline), never a mix: the old index
    goes first, each component is replaced whole (rename), the new index comes last. Other files there (checkpoints,
    logs, a model card) are kept."""
    index = os.path.join(save_directory, marker)
    if os.path.exists(index):
        os.remove(index)
    for name in sorted(os.listdir(staging)):
        if name == marker:
            continue
        source, target = os.path.join(staging, name), os.path.join(save_directory, name)
        if os.path.isdir(target) and not os.path.islink(target):
            old = tempfile.mkdtemp(prefix=f".tmp-old-{name}-", dir=save_directory)
            os.replace(target, os.path.join(old, name))
            os.replace(source, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, target)
    os.replace(os.path.join(staging, marker), index)


def _has_card(repo_id: str, token: str | None, revision: str | None) -> bool:
    """Whether the repo already has a README.md (then it is kept, as diffusers' `push_to_hub` keeps it)."""
    from huggingface_hub import file_exists
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return file_exists(repo_id, "README.md", revision=revision, token=token)
    except (RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError):
        return False
