"""Every ```python block of README.md and docs/*.md runs as written, the way a reader pastes it.

- One test per document; its blocks run in order, each in a fresh namespace, except a block whose preceding text
  says it continues the one above ("continuing from the block above"), which runs in that block's namespace.
- The working directory is a temporary folder in which the run folders the blocks load (`runs/ddpm-digits`,
  `runs/cfg-digits`, ...) exist as tiny pipelines of the right type (tests/docs_run_folders.py); whatever the blocks
  write lands there, under its runs/ (as the docs promise: nothing in the working directory itself), and the
  repository gains no file.
- A block right after `<!-- no-run: reason -->` (a download, a Hub account) is not run; its test is skipped with
  that reason, so the list of unrun blocks stays visible in `pytest -rs`.
- `torch.compile` is switched off with PyTorch's own `TORCHDYNAMO_DISABLE=1`: a block that asks for it runs its
  code path with eager kernels instead of spending a minute compiling a tiny model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.docs_run_folders import RUN_FOLDERS, RunFolders

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
NO_RUN = re.compile(r"<!--\s*no-run:\s*([^>]*?)\s*-->\s*$")
CONTINUES = re.compile(r"continu\w* (?:from )?the (?:block|example|code) above", flags=re.I)


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    line: int  # line of the first code line in the document
    code: str
    no_run: str | None  # the reason, for a block marked <!-- no-run: ... -->
    continues: bool  # runs in the namespace of the block before it


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks, previous_end = [], 0
    for match in FENCE.finditer(text):
        before = text[previous_end : match.start()]
        no_run = NO_RUN.search(before.rstrip() + "\n") if before.strip() else None
        line = text.count("\n", 0, match.start(1)) + 1
        doc = path.relative_to(ROOT).as_posix()
        blocks.append(Block(doc, line, match.group(1), no_run and no_run.group(1), bool(CONTINUES.search(before))))
        previous_end = match.end()
    return blocks


BLOCKS = {path.relative_to(ROOT).as_posix(): python_blocks(path) for path in DOCS}
DOCS_WITH_BLOCKS = [doc for doc, blocks in BLOCKS.items() if any(b.no_run is None for b in blocks)]
NOT_RUN = [b for blocks in BLOCKS.values() for b in blocks if b.no_run is not None]


def run_folders_named(blocks: list[Block]) -> list[str]:
    code = "\n".join(b.code for b in blocks)
    return [name for name in RUN_FOLDERS if re.search(rf"[\"']{re.escape(name)}/?[\"']", code)]


def repo_entries() -> set[str]:
    """The repository's top-level entries and those of its runs/ folder (where a stray write would land)."""
    entries = set(os.listdir(ROOT))
    if (ROOT / "runs").is_dir():
        entries |= {f"runs/{name}" for name in os.listdir(ROOT / "runs")}
    return entries


@pytest.fixture(scope="session")
def run_folders(tmp_path_factory):
    return RunFolders(tmp_path_factory.mktemp("doc-runs"))


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    """The digits classifier (FID features, classifier guidance) trained once per session, not in ~/.cache."""
    return tmp_path_factory.mktemp("digits-cache")


def test_the_docs_have_python_blocks():
    assert len(DOCS_WITH_BLOCKS) >= 10 and sum(len(b) for b in BLOCKS.values()) >= 25


@pytest.mark.parametrize("doc", DOCS_WITH_BLOCKS)
def test_python_blocks_run_as_written(doc, run_folders, digits_cache, tmp_path, monkeypatch):
    blocks = BLOCKS[doc]
    workdir = tmp_path / "work"
    workdir.mkdir()
    run_folders.copy_into(workdir, run_folders_named(blocks))
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CUSTOM_PIPELINES_CACHE", str(digits_cache))
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    before = repo_entries()
    namespace: dict = {}
    for i, block in enumerate(blocks):
        if block.no_run is not None:
            continue
        if block.continues:
            assert i > 0 and blocks[i - 1].no_run is None, f"{doc}:{block.line} continues a block that does not run"
        else:
            namespace = {"__name__": "__main__"}
        torch.manual_seed(0)
        # padded with newlines so that a traceback names the document's own line numbers
        code = compile("\n" * (block.line - 1) + block.code, str(ROOT / doc), "exec")
        exec(code, namespace)
    assert repo_entries() <= before, f"{doc}: blocks wrote into the repository: {sorted(repo_entries() - before)}"
    outside_runs = sorted(set(os.listdir(workdir)) - {"runs"})
    assert not outside_runs, f"{doc}: blocks wrote {outside_runs} into the working directory: write under runs/"


@pytest.mark.parametrize("block", NOT_RUN, ids=[f"{b.doc}:{b.line}" for b in NOT_RUN])
def test_blocks_marked_no_run(block):
    assert block.no_run, f"{block.doc}:{block.line}: a no-run marker must give its reason"
    pytest.skip(f"{block.doc}:{block.line} not run: {block.no_run}")
