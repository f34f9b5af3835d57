import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import custom_pipelines.evaluation.digits_classifier as digits_module
from custom_pipelines.evaluation.digits_classifier import (
    DigitsClassifier,
    DigitsFeatureExtractor,
    accuracy,
    default_cache_dir,
    load_digits_classifier,
    train_digits_classifier,
)
from custom_pipelines.evaluation.features import load_digits_images, quantize_uint8, reference_features


@pytest.fixture
def classifier(digits_cache):
    return load_digits_classifier(16)  # found through $CUSTOM_PIPELINES_CACHE, trained once per session


def test_held_out_accuracy(classifier, digits_cache):
    test_images, test_labels = load_digits_images("test", 16)
    assert test_images.shape == (450, 1, 16, 16) and test_labels.shape == (450,)
    test_accuracy = accuracy(classifier, test_images, test_labels)
    assert test_accuracy >= 0.9
    with open(digits_cache / "digits_classifier_16" / "training_report.json") as f:
        report = json.load(f)
    assert report["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    assert report["num_train"] == 1347 and report["num_test"] == 450


def test_cache_is_reused_and_env_var_honoured(classifier, digits_cache, monkeypatch):
    assert default_cache_dir(16) == os.path.join(str(digits_cache), "digits_classifier_16")
    monkeypatch.setattr(digits_module, "train_digits_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = load_digits_classifier(16)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), classifier.state_dict().values()))
    monkeypatch.delenv("CUSTOM_PIPELINES_CACHE")
    assert default_cache_dir(32) == os.path.expanduser("~/.cache/custom_pipelines/digits_classifier_32")


def test_training_is_deterministic_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    model_a, report_a = train_digits_classifier(16, num_epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    model_b, _ = train_digits_classifier(16, num_epochs=1)
    for (key, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), key
    assert report_a["recipe"]["num_epochs"] == 1


def test_save_load_round_trip(tmp_path):
    model = DigitsClassifier(resolution=32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DigitsClassifier.from_pretrained(tmp_path, use_safetensors=True)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(images), model(images))
    with pytest.raises(ValueError, match="resolution must be >= 8"):
        DigitsClassifier(resolution=4)


def test_preprocessing_handles_rgb_and_other_sizes(classifier):
    gray = load_digits_images("test", 16)[0][:8]
    extractor = DigitsFeatureExtractor(classifier)
    features, logits = extractor.features_and_logits(gray)
    assert features.shape == (8, 128) and logits.shape == (8, 10) and extractor.feature_dim == 128
    # RGB with equal channels is the same image once converted to gray and quantised.
    assert torch.equal(extractor(gray.repeat(1, 3, 1, 1)), features)
    labels, probs = extractor.classify(torch.nn.functional.interpolate(gray, size=32, mode="bilinear"))
    assert labels.shape == (8,) and probs.sum(-1).allclose(torch.ones(8))
    assert (labels == load_digits_images("test", 16)[1][:8]).float().mean() >= 0.75
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        extractor(gray[0])


def test_digits_reference_features(classifier):
    extractor = DigitsFeatureExtractor(classifier)
    features = reference_features("digits", extractor, resolution=16)
    assert features.shape == (1797, 128)
    assert torch.equal(reference_features("digits", extractor, 16, num_samples=100), features[:100])
    assert reference_features("digits", extractor, 16, split="test").shape == (450, 128)
    with pytest.raises(ValueError, match="resolution is required"):
        reference_features("digits", extractor)
    with pytest.raises(ValueError, match="'digits' or an existing folder"):
        reference_features("mnist", extractor, 16)
    with pytest.raises(ValueError, match="split must be"):
        load_digits_images("val")


def test_folder_reference_equals_builtin_digits(classifier, tmp_path):
    images = load_digits_images("all", 16)[0][:20]
    for i, image in enumerate(images):
        array = (image[0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(tmp_path / f"{i:03d}.png")
    extractor = DigitsFeatureExtractor(classifier)
    from_folder = reference_features(tmp_path, extractor, num_samples=20, batch_size=7)
    # 8-bit PNGs of quantised images reload exactly (next line); the features agree up to float rounding, which
    # depends on the batch size (7 here, 20 below) on CPUs whose conv kernels block by batch (oneDNN, AVX-512)
    torch.testing.assert_close(from_folder, extractor(images), rtol=0, atol=1e-5)
    assert torch.equal(quantize_uint8(images), images)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "999.png")
    with pytest.raises(ValueError, match="different sizes"):
        reference_features(tmp_path, extractor)
    assert reference_features(tmp_path, extractor, resolution=16).shape == (21, 128)
