"""The shim files every saved folder carries, and the rule that decides what counts as our code (no server)."""

import json
import shutil

import numpy as np
import pytest
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline

from custom_pipelines import load_pipeline
from custom_pipelines.hub.shims import check_shims, code_files, expected_shims, foreign_code, write_shims
from tests.hub.tiny_pipelines import KINDS, OUR_COMPONENT, PIPELINE_CLASSES, build, sample
from tests.utils import tiny_unet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each kind saved once: `{kind: folder}`."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind in KINDS:
        build(kind).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_writes_exactly_the_shims(saved, kind):
    folder, cls = saved[kind], PIPELINE_CLASSES[kind]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", cls.__name__]
    assert (folder / "pipeline.py").read_text() == f"from custom_pipelines import {cls.__name__}\n"
    component, component_cls = OUR_COMPONENT[kind]
    library = index[component][0]
    assert library == component_cls.__module__
    shim = folder / component / f"{library}.py"
    assert shim.read_text() == f"from {library} import {component_cls.__name__}\n"
    ours = [c for c, v in index.items() if isinstance(v, list) and v[0].startswith("custom_pipelines.")]
    assert code_files(folder) == sorted(["pipeline.py", *(f"{c}/{index[c][0]}.py" for c in ours)])
    assert check_shims(folder) == [] and foreign_code(folder) == []


@pytest.mark.parametrize("kind", KINDS)
def test_all_three_loading_paths_on_a_saved_folder(saved, kind):
    folder, cls = saved[kind], PIPELINE_CLASSES[kind]
    expected = sample(cls.from_pretrained(folder), kind)
    with_diffusers = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # path 1
    assert type(with_diffusers) is cls
    np.testing.assert_array_equal(sample(with_diffusers, kind), expected)
    for loaded in (load_pipeline(folder), cls.from_pretrained(folder)):  # path 2, no trust_remote_code
        assert type(loaded) is cls
        np.testing.assert_array_equal(sample(loaded, kind), expected)
    with pytest.raises(ValueError, match="trust_remote_code"):  # diffusers' own gate stays for path 1
        DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tamper", ["extra line", "extra file"])
def test_code_that_is_not_our_shim_keeps_the_gate(saved, kind, tamper, tmp_path):
    folder, cls = copy(saved[kind], tmp_path), PIPELINE_CLASSES[kind]
    component, _ = OUR_COMPONENT[kind]
    if tamper == "extra line":
        (shim,) = (folder / component).glob("*.py")
        shim.write_text(shim.read_text() + "TAMPERED = True\n")
        name = f"{component}/{shim.name}"
    else:
        (folder / "helper.py").write_text("print('hello')\n")
        name = "helper.py"
    assert foreign_code(folder) == [name]
    for load in (load_pipeline, cls.from_pretrained):
        with pytest.raises(ValueError, match=rf"(?s){name}.*trust_remote_code=True"):
            load(folder)
    # the caller who reviewed the file can still load it: the gate is diffusers' own again
    assert type(cls.from_pretrained(folder, trust_remote_code=True)) is cls


def test_write_shims_is_idempotent_and_repairs(saved, tmp_path):
    folder = copy(saved["stylegan"], tmp_path)
    before = {p: (folder / p).read_bytes() for p in code_files(folder)}
    assert write_shims(folder) == sorted(before)
    assert {p: (folder / p).read_bytes() for p in code_files(folder)} == before
    (folder / "pipeline.py").unlink()
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StyleGANPipeline"}))
    assert check_shims(folder) == [
        'model_index.json: _class_name is \'StyleGANPipeline\', not ["pipeline", "StyleGANPipeline"]',
        "pipeline.py: missing",
    ]
    write_shims(folder)
    assert check_shims(folder) == [] and {p: (folder / p).read_bytes() for p in code_files(folder)} == before


@pytest.mark.parametrize(
    "index",
    [
        {"_class_name": ["pipeline", "StyleGANPipeline\nimport os"]},
        {"_class_name": ["pipeline", "NotOurs"]},
        {"_class_name": "X", "unet": ["custom_pipelines.models; import os", "ClassConcatUNet2DModel"]},
        {"_class_name": "X", "unet": ["custom_pipelines.models", "Class; import os"]},
        {"_class_name": "X", "../unet": ["custom_pipelines.models", "ClassConcatUNet2DModel"]},
        {"_class_name": "X", "unet": ["evil_package.models", "ClassConcatUNet2DModel"]},
    ],
)
def test_model_index_cannot_smuggle_code_into_a_shim(index):
    """model_index.json ships with the repo: a name that is not a plain identifier (or not in our package) gets no
    shim, so a .py file written for it is foreign code."""
    shims = expected_shims(index)
    assert all(line.count("\n") == 1 and " import " in line for line in shims.values())
    assert not any("os" in line.split() or "evil" in line or ".." in path for path, line in shims.items())
    assert shims == {}


def test_a_stock_diffusers_pipeline_gets_no_shims_and_loads(tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(tmp_path)
    assert write_shims(tmp_path) == [] and code_files(tmp_path) == []
    assert type(load_pipeline(tmp_path)) is DDPMPipeline


def test_a_folder_saved_before_shims_existed_still_loads(saved, tmp_path):
    """Plain `_class_name` string, no shim files: our loaders import our component libraries themselves."""
    folder = copy(saved["stylegan"], tmp_path)
    for path in code_files(folder):
        (folder / path).unlink()
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StyleGANPipeline"}))
    expected = sample(PIPELINE_CLASSES["stylegan"].from_pretrained(saved["stylegan"]), "stylegan")
    np.testing.assert_array_equal(sample(load_pipeline(folder), "stylegan"), expected)


def test_save_load_save_keeps_the_shims(saved, tmp_path):
    for kind in KINDS:
        loaded = DiffusionPipeline.from_pretrained(saved[kind], trust_remote_code=True)
        loaded.save_pretrained(tmp_path / kind)
        assert check_shims(tmp_path / kind) == []
        assert {p: (tmp_path / kind / p).read_text() for p in code_files(tmp_path / kind)} == {
            p: (saved[kind] / p).read_text() for p in code_files(saved[kind])
        }
        np.testing.assert_array_equal(sample(load_pipeline(tmp_path / kind), kind), sample(loaded, kind))


def test_every_public_pipeline_saves_shims_and_checks_code_on_load():
    """A pipeline class that does not inherit HubPipelineMixin would save folders diffusers cannot load."""
    from diffusers import DiffusionPipeline as Base

    import custom_pipelines
    from custom_pipelines.hub.mixin import HubPipelineMixin

    public = [getattr(custom_pipelines, n) for n in custom_pipelines.__all__ if n.endswith("Pipeline")]
    assert {cls.__name__ for cls in public} >= {cls.__name__ for cls in PIPELINE_CLASSES.values()}
    for cls in public:
        assert issubclass(cls, Base) and issubclass(cls, HubPipelineMixin), cls
        assert cls.__mro__.index(HubPipelineMixin) < cls.__mro__.index(Base), cls
