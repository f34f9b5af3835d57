"""Upload a saved pipeline folder: shims first, then one `upload_folder` commit, so no revision of the repo ever
lacks them (diffusers' own `save_pretrained(push_to_hub=True)` uploads before a subclass could add files).

    python -m custom_pipelines.hub.push runs/ddpm-digits your-name/ddpm-digits [--private]

`push_preflight_error` is what a training run with `--push_to_hub` checks before its first step.
"""

from __future__ import annotations

import argparse
import logging
import os

from .shims import check_shims, foreign_code, write_shims

logger = logging.getLogger(__name__)

# Never part of a pipeline repo: atomic-write leftovers (custom_pipelines.io) and Python caches.
ALWAYS_IGNORED = [".tmp-*", "**/.tmp-*", "__pycache__/**", "**/__pycache__/**", "*.pyc"]
# What a training run keeps for itself: resumable state and TensorBoard event files, not the model.
TRAINING_RUN_IGNORED = ["checkpoint-*", "checkpoint-*/**", "logs/**"]


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


def push_preflight_error(repo_id: str, token: str | None = None) -> str | None:
    """Why a push to `repo_id` would fail, checked without writing anything (None when it would not): offline mode,
    an invalid repo id, no token, a hub that cannot be reached or refuses the token, a read-only token."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if constants.is_offline_mode():
        return (
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1; the Makefile sets it): set HF_HUB_OFFLINE=0 to "
            "push, or drop --push_to_hub and push the saved folder later with python -m custom_pipelines.hub.push"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return f"--hub_model_id {repo_id!r} is not a valid repo id ({err})"
    token = token or get_token()
    if not token:
        return "no Hub token: log in with `hf auth login`, set HF_TOKEN, or pass --hub_token"
    try:
        info = HfApi(token=token).whoami()
    except Exception as err:  # connection errors, 401, 5xx: all mean the push would fail
        return f"the Hub at {constants.ENDPOINT} refused or did not answer whoami ({type(err).__name__}: {err})"
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        return f"the token of {info.get('name')!r} is read-only: use a token with write access"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m custom_pipelines.hub.push", allow_abbrev=False, description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", help="a saved pipeline folder (a training run's --output_dir)")
    parser.add_argument("repo_id", help="the Hub repo to push to, e.g. your-name/ddpm-digits (created if needed)")
    parser.add_argument("--token", default=None, help="default: HF_TOKEN or the token of `hf auth login`")
    parser.add_argument("--private", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """The command: check what can be checked, then push `folder` (checkpoints and logs left out)."""
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.folder, "model_index.json")):
        raise ValueError(f"folder {args.folder!r} holds no model_index.json: not a saved pipeline")
    reason = push_preflight_error(args.repo_id, args.token)
    if reason is not None:
        raise ValueError(reason)
    info = push_pipeline_folder(
        args.folder,
        args.repo_id,
        token=args.token,
        private=args.private or None,
        ignore_patterns=TRAINING_RUN_IGNORED,
    )
    print(f"pushed {args.folder} to {args.repo_id}: {info}")
    return str(info)


if __name__ == "__main__":
    from custom_pipelines.cli import run_cli

    run_cli(main)
