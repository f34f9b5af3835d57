"""Atomic writes: a failed write keeps the old file and leaves no temp file; permissions follow the umask."""

import json
import os
import stat

import pytest
from PIL import Image

from custom_pipelines.io import atomic_path, save_image, write_json


def test_write_json_replaces_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    old = os.umask(0o022)
    try:
        write_json(path, {"fid": 0.5})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"fid": 0.5}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o640  # the umask as it is now
    write_json(path, {"fid": 0.25})
    assert json.loads(path.read_text()) == {"fid": 0.25}
    assert os.listdir(path.parent) == ["metrics.json"]
    assert sorted(os.listdir(tmp_path)) == ["private.json", "sub"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"fid": 0.5})
    with pytest.raises(TypeError):
        write_json(path, {"fid": object()})  # not JSON-serialisable: fails halfway through the dump
    assert json.loads(path.read_text()) == {"fid": 0.5}
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        open(tmp, "w").write("{half")
        raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"fid": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_save_image_keeps_format_from_extension(tmp_path):
    image = Image.new("L", (4, 3), color=200)
    save_image(image, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as loaded:
        assert loaded.format == "PNG" and loaded.size == (4, 3) and loaded.getpixel((0, 0)) == 200
    assert os.listdir(tmp_path) == ["grid.png"]
