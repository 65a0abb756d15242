"""Shared fixtures for training tests: a tiny conv+BN segmentation net (compiles in well under a second)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


class TinySegNet(nnx.Module):
    """conv3x3 -> BN -> relu -> conv1x1, NHWC in, (N, H, W, 1) logits out."""

    def __init__(self, in_channels=3, width=4, use_bn=True, *, rngs):
        self.conv = nnx.Conv(in_channels, width, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs) if use_bn else None
        self.head = nnx.Conv(width, 1, (1, 1), rngs=rngs)

    def __call__(self, x, train=None):
        h = self.conv(x)
        if self.bn is not None:
            h = self.bn(h, use_running_average=not train)
        return self.head(nnx.relu(h))


@pytest.fixture
def tiny_model():
    def make(seed=0, use_bn=True):
        return TinySegNet(use_bn=use_bn, rngs=nnx.Rngs(seed))
    return make


@pytest.fixture
def seg_batch():
    def make(n=4, hw=8, seed=0):
        rng = np.random.default_rng(seed)
        image = rng.normal(size=(n, hw, hw, 3)).astype(np.float32)
        mask = (image[..., :1] > 0.3).astype(np.float32)  # learnable from the input
        return {"image": jnp.asarray(image), "mask": jnp.asarray(mask)}
    return make
