"""Test-wide JAX settings (as equinox's conftest): strict promotion, rank promotion raises, 2 CPU devices.

Everything here runs before the first backend use, so sharding code paths see 2 devices on CPU.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_ROOT = pathlib.Path(__file__).resolve().parents[1]
# A persistent compile cache lets subprocess tests (multi-device, multi-process) reuse compiles.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

SHARED = pathlib.Path(os.environ.get("LGMSNET_SHARED", _ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The `../shared` folder (fixtures, real data); skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (set LGMSNET_SHARED to its location)")
    return SHARED
