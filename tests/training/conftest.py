import pytest


@pytest.fixture(autouse=True)
def _every_training_test_starts_clean(fresh_accelerate_state):
    """Each in-process training run gets fresh accelerate singletons (the fixture lives in tests/conftest.py)."""
    yield
