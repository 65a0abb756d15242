"""Shared fixtures for training tests: the tiny net of tiny_net.py and small random batches."""
import sys
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_net import TinySegNet, tiny_config  # noqa: E402,F401


@pytest.fixture
def tiny_model():
    def make(seed=0, use_bn=True, dtype=jnp.float32):
        return TinySegNet(use_bn=use_bn, dtype=dtype, rngs=nnx.Rngs(seed))
    return make


@pytest.fixture
def seg_batch():
    def make(n=4, hw=8, seed=0):
        rng = np.random.default_rng(seed)
        image = rng.normal(size=(n, hw, hw, 3)).astype(np.float32)
        mask = (image[..., :1] > 0.3).astype(np.float32)  # learnable from the input
        return {"image": jnp.asarray(image), "mask": jnp.asarray(mask)}
    return make
