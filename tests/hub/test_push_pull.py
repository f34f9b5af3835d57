"""Push to the test hub with huggingface_hub's real upload client; pull through olah (a third-party Hub mirror) and
the test hub; the three loading paths, components alone, revisions and offline use on what was pushed."""

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from custom_pipelines import load_pipeline
from custom_pipelines.hub.cards import pipeline_tag
from custom_pipelines.hub.shims import check_shims, code_files
from tests.hub.tiny_pipelines import KINDS, OUR_COMPONENT, PIPELINE_CLASSES, build, sample, state_dicts


def assert_same_weights(pipe, tensors):
    loaded = state_dicts(pipe)
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value), key


def local_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", KINDS)
def test_push_uploads_weights_configs_shims_and_a_card(pushed, test_hub, use_hub, kind):
    repo = pushed[kind]
    use_hub(test_hub)
    files = HfApi().list_repo_files(repo.repo_id, revision=repo.commit)
    assert sorted(files) == sorted([".gitattributes", "README.md", *local_files(repo.folder)])
    assert any(f.endswith(".safetensors") for f in files) and not any(f.endswith(".bin") for f in files)
    for path in local_files(repo.folder):  # byte for byte what save_pretrained writes locally
        assert (
            open(hf_hub_download(repo.repo_id, path, revision=repo.commit), "rb").read()
            == (repo.folder / path).read_bytes()
        ), path
    card = ModelCard.load(repo.repo_id)
    cls = PIPELINE_CLASSES[kind].__name__
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == pipeline_tag(cls)
    assert {"custom_pipelines", "diffusers", cls} <= set(card.data.tags)
    assert f'DiffusionPipeline.from_pretrained("{repo.repo_id}", trust_remote_code=True)' in card.text


@pytest.mark.parametrize("kind", KINDS)
def test_pull_through_olah_is_bit_identical(pushed, olah_hub, use_hub, kind):
    repo = pushed[kind]
    use_hub(olah_hub)
    pipe = load_pipeline(repo.repo_id)  # path 2 against a server implementation that is not ours
    assert type(pipe) is PIPELINE_CLASSES[kind]
    assert_same_weights(pipe, repo.tensors)
    np.testing.assert_array_equal(sample(pipe, kind), repo.reference)


@pytest.mark.parametrize("source", ["folder", "olah"])
@pytest.mark.parametrize("kind", KINDS)
def test_path1_diffusers_alone_in_a_fresh_process(path1_results, pushed, kind, source):
    cls = PIPELINE_CLASSES[kind]
    result = path1_results[(kind, source)]
    assert result["class"] == f"{cls.__module__}.{cls.__name__}"
    np.testing.assert_array_equal(result["images"], pushed[kind].reference)


@pytest.mark.parametrize("kind", KINDS)
def test_path2_without_trust_remote_code_by_repo_id(pushed, test_hub, use_hub, kind):
    repo, cls = pushed[kind], PIPELINE_CLASSES[kind]
    use_hub(test_hub)
    for pipe in (cls.from_pretrained(repo.repo_id), load_pipeline(repo.repo_id, revision=repo.commit)):
        assert type(pipe) is cls and pipe.config._name_or_path == repo.repo_id
        np.testing.assert_array_equal(sample(pipe, kind), repo.reference)


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_shim_in_a_repo_is_refused_before_any_weights_download(pushed, test_hub, use_hub, kind, tmp_path):
    import shutil

    repo_id, cls = f"user/tampered-{kind}", PIPELINE_CLASSES[kind]
    folder = shutil.copytree(pushed[kind].folder, tmp_path / "tampered")
    (folder / "pipeline.py").write_text((folder / "pipeline.py").read_text() + "TAMPERED = True\n")
    home = use_hub(test_hub)
    api = HfApi()
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)  # what a repo edited by someone else looks like
    for load in (cls.from_pretrained, load_pipeline):
        with pytest.raises(ValueError, match=rf"'{repo_id}' contains code .*: pipeline\.py .*trust_remote_code=True"):
            load(repo_id)
    assert not list(home.rglob("*.safetensors"))  # refused on the code alone
    with pytest.raises(ValueError, match="trust_remote_code"):  # and diffusers' own gate is there too
        DiffusionPipeline.from_pretrained(repo_id)
    assert type(load_pipeline(repo_id, trust_remote_code=True)) is cls  # after review, the caller's call


@pytest.mark.parametrize("kind", KINDS)
def test_each_component_loads_alone(pushed, test_hub, use_hub, kind):
    repo = pushed[kind]
    use_hub(test_hub)
    name, component_cls = OUR_COMPONENT[kind]
    component = component_cls.from_pretrained(repo.repo_id, subfolder=name)
    assert type(component) is component_cls
    if name == "scheduler":
        assert dict(component.config) == dict(build(kind).scheduler.config)
    else:
        weights = {k.split(".", 1)[1]: v for k, v in repo.tensors.items() if k.startswith(f"{name}.")}
        assert component.state_dict().keys() == weights.keys()
        assert all(torch.equal(component.state_dict()[k], v) for k, v in weights.items())
    if kind in ("ddpm", "cfg"):  # our scheduler from the repo's scheduler/ folder
        scheduler = type(build(kind).scheduler).from_pretrained(repo.repo_id, subfolder="scheduler")
        assert dict(scheduler.config) == dict(build(kind).scheduler.config)


@pytest.mark.parametrize("kind", KINDS)
def test_pull_save_pull_keeps_the_shims(pushed, test_hub, use_hub, kind, tmp_path):
    repo = pushed[kind]
    use_hub(test_hub)
    pipe = DiffusionPipeline.from_pretrained(repo.repo_id, trust_remote_code=True)
    pipe.save_pretrained(tmp_path / "again")
    assert check_shims(tmp_path / "again") == [] and code_files(tmp_path / "again") == code_files(repo.folder)
    info = pipe.push_to_hub(f"user/again-{kind}")
    np.testing.assert_array_equal(sample(load_pipeline(f"user/again-{kind}", revision=info.oid), kind), repo.reference)


def test_two_pushes_make_two_revisions_and_the_old_one_loads_the_old_weights(test_hub, olah_hub, use_hub, tmp_path):
    repo_id = "user/revisions"
    first_pipe, second_pipe = build("stylegan", seed=0), build("stylegan", seed=1)
    use_hub(test_hub, home=tmp_path / "pusher")
    first, second = first_pipe.push_to_hub(repo_id), second_pipe.push_to_hub(repo_id)
    assert first.oid != second.oid
    assert HfApi().model_info(repo_id).sha == second.oid
    for server in (test_hub, olah_hub):
        use_hub(server, home=tmp_path / server.endpoint.rsplit(":", 1)[1])
        assert_same_weights(load_pipeline(repo_id, revision=first.oid), state_dicts(first_pipe))
        old = PIPELINE_CLASSES["stylegan"].from_pretrained(repo_id, revision=first.oid)
        assert_same_weights(old, state_dicts(first_pipe))
        assert_same_weights(load_pipeline(repo_id), state_dicts(second_pipe))  # main


def test_errors_name_the_missing_repo_revision_or_file(pushed, test_hub, use_hub, tmp_path):
    import shutil

    use_hub(test_hub)
    cls = PIPELINE_CLASSES["ddpm"]
    for load in (load_pipeline, cls.from_pretrained):
        with pytest.raises(ValueError, match="Hub repo 'user/no-such-repo' does not exist on http://127.0.0.1"):
            load("user/no-such-repo")
        with pytest.raises(ValueError, match="revision 'no-such-branch' does not exist in Hub repo 'user/tiny-ddpm'"):
            load("user/tiny-ddpm", revision="no-such-branch")
    folder = shutil.copytree(pushed["ddpm"].folder, tmp_path / "no-weights")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    api = HfApi()
    api.create_repo("user/no-weights")
    api.upload_folder(repo_id="user/no-weights", folder_path=folder)
    for load in (load_pipeline, cls.from_pretrained):
        with pytest.raises(OSError, match=r"diffusion_pytorch_model\.(safetensors|bin).*unet"):
            load("user/no-weights")


def test_save_pretrained_with_push_to_hub_uploads_the_shims_too(test_hub, use_hub, tmp_path):
    """diffusers' own `save_pretrained(push_to_hub=True)` uploads before a subclass could add files; ours does not."""
    use_hub(test_hub)
    build("gan").save_pretrained(tmp_path / "gan", push_to_hub=True, repo_id="user/saved-and-pushed")
    files = set(HfApi().list_repo_files("user/saved-and-pushed"))
    assert set(code_files(tmp_path / "gan")) <= files and "gan_generator/diffusion_pytorch_model.safetensors" in files
