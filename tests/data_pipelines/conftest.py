"""Fixtures shared by the 2D data-pipeline tests."""
import pytest


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory):
    """One cache folder for every test that reads the real ../shared data (each dataset is decoded once)."""
    return tmp_path_factory.mktemp("real_cache")
