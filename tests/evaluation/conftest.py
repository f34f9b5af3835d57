import os

import pytest

from custom_pipelines.evaluation.digits_classifier import load_digits_classifier


@pytest.fixture(scope="session")
def digits_cache_root(tmp_path_factory):
    """A cache folder holding the 16×16 digits classifier, trained once per test session (~3 s)."""
    root = tmp_path_factory.mktemp("custom_pipelines_cache")
    load_digits_classifier(16, cache_dir=os.path.join(root, "digits_classifier_16"))
    return root


@pytest.fixture
def digits_cache(digits_cache_root, monkeypatch):
    """Point CUSTOM_PIPELINES_CACHE at the session cache, so default lookups find the trained classifier."""
    monkeypatch.setenv("CUSTOM_PIPELINES_CACHE", str(digits_cache_root))
    return digits_cache_root
