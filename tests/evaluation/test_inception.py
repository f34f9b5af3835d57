import pytest
import torch
from safetensors.torch import save_file

from custom_pipelines.evaluation.evaluator import build_feature_extractor
from custom_pipelines.evaluation.inception import InceptionFeatureExtractor, InceptionV3FID, load_inception_fid


@pytest.fixture(scope="module")
def inception():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return InceptionV3FID().eval()


def test_architecture_matches_the_fid_inception(inception):
    state_dict = inception.state_dict()
    # torchvision's Inception-v3 names without AuxLogits, 94 conv+bn units + fc: the keys of pt_inception-2015-12-05.
    assert len(state_dict) == 94 * 5 + 2
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960
    assert state_dict["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state_dict["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state_dict["Mixed_6e.branch7x7dbl_5.bn.running_var"].shape == (192,)
    assert state_dict["fc.weight"].shape == (1008, 2048)
    assert inception.Mixed_7b.pool == "avg" and inception.Mixed_7c.pool == "max"


def test_features_of_small_images_are_resized_internally(inception):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    output = inception(images)
    assert output.features.shape == (2, 2048) and output.logits.shape == (2, 1008)
    assert torch.isfinite(output.features).all() and (output.features >= 0).all()  # pooled ReLU activations
    extractor = InceptionFeatureExtractor(inception)
    features, logits = extractor.features_and_logits(images[:, :1])  # grayscale is repeated to RGB
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert extractor.probs(images).sum(-1).allclose(torch.ones(2))


def test_safetensors_round_trip_is_bit_identical(inception, tmp_path):
    path = tmp_path / "pt_inception.safetensors"
    # Converted torch checkpoints also carry num_batches_tracked counters; they must be accepted and ignored.
    extra = {"Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)}
    save_file({**{k: v.contiguous() for k, v in inception.state_dict().items()}, **extra}, str(path))
    loaded = load_inception_fid(path)
    for key, value in inception.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(images).features, inception(images).features)
    # The diffusers layout (save_pretrained folder) loads too.
    inception.save_pretrained(tmp_path / "folder")
    from_folder = load_inception_fid(tmp_path / "folder")
    assert torch.equal(from_folder.state_dict()["fc.weight"], inception.state_dict()["fc.weight"])


def test_bad_weights_give_clear_errors(inception, tmp_path):
    with pytest.raises(ValueError, match="neither an existing file or folder nor a Hub repo id"):
        load_inception_fid(tmp_path / "missing.safetensors")
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    pth.write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        load_inception_fid(pth)
    wrong = tmp_path / "wrong.safetensors"
    state_dict = {k: v.contiguous() for k, v in inception.state_dict().items()}
    del state_dict["fc.bias"]
    save_file({**state_dict, "extra.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ValueError, match=r"1 missing keys \(e.g. \['fc.bias'\]\), 1 unexpected"):
        load_inception_fid(wrong)
    with pytest.raises(ValueError, match="no config.json"):
        load_inception_fid(tmp_path)
    with pytest.raises(ValueError, match="filename must name a .safetensors"):
        load_inception_fid("someone/inception", filename="weights.pth")
    with pytest.raises(ValueError, match="needs inception_weights"):
        build_feature_extractor("inception")
    with pytest.raises(ValueError, match="'digits' or 'inception'"):
        build_feature_extractor("clip")


def test_corrupt_safetensors_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)  # read by safetensors (no pickle): rejected, never executed
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        load_inception_fid(bad)
