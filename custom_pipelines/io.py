"""Write user-facing files atomically: into a temporary sibling, then `os.replace`, so a crash or a full disk never
leaves a half-written JSON or PNG where a good one was."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def _current_umask() -> int:
    """The process umask. Read from /proc on Linux: the os.umask(0)/os.umask(old) swap would briefly give other
    threads (TensorBoard's writer, for one) a umask of 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _default_mode(is_dir: bool) -> int:
    return (0o777 if is_dir else 0o666) & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to `path`; on success it replaces `path` (with the usual umask permissions,
    not mkstemp's 0600); on error it is removed and `path` is untouched. `suffix` keeps an extension for writers
    that pick the format from it (PIL)."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(is_dir=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data, indent: int = 2) -> None:
    """`json.dump` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)


def save_image(image, path: str | os.PathLike) -> None:
    """`PIL.Image.save` to `path` atomically; the format comes from `path`'s extension."""
    suffix = os.path.splitext(os.fspath(path))[1]
    with atomic_path(path, suffix=suffix) as tmp:
        image.save(tmp)


def make_dir_public(path: str | os.PathLike) -> None:
    """Give a `tempfile.mkdtemp` folder (0700) the usual umask permissions before it is renamed into place."""
    os.chmod(path, _default_mode(is_dir=True))
