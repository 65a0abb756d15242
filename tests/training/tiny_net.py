"""A tiny conv+BN segmentation net registered as "tiny_test_net", so loop tests compile in about a second.

Imported by tests in-process and by subprocess tests (multi-device, multi-process) via sys.path.
"""
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers, register_model, registered_models


class TinySegNet(nnx.Module):
    """conv3x3 -> BN -> relu -> conv1x1, NHWC in, (N, H, W, num_classes) logits out."""

    def __init__(self, in_channels=3, num_classes=1, width=4, use_bn=True, dtype=jnp.float32, *, rngs):
        self.conv = nnx.Conv(in_channels, width, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
        # Normalisation in f32 (as LGMSNet does); flax's BatchNorm mixes bf16/f32 under strict promotion.
        # use_bn="project": the models' own BatchNorm (layers.BatchNorm), which per-device statistics act on.
        self.bn = (layers.BatchNorm(width) if use_bn == "project" else
                   nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs) if use_bn else None)
        self.dtype = dtype
        self.head = nnx.Conv(width, num_classes, (1, 1), dtype=dtype, rngs=rngs)

    def __call__(self, x, train=None):
        h = self.conv(x)
        if self.bn is not None:
            h = (self.bn(h.astype(jnp.float32), train=train) if isinstance(self.bn, layers.BatchNorm) else
                 self.bn(h.astype(jnp.float32), use_running_average=not train)).astype(self.dtype)
        return self.head(nnx.relu(h))


def _factory(ndim, in_channels, num_classes, rngs, width=4, use_bn=True, **lgmsnet_kwargs):
    del ndim, lgmsnet_kwargs  # accepts (and ignores) a config's LGMSNet keywords: --config.model_name=tiny_test_net
    return TinySegNet(in_channels, num_classes, width, use_bn, rngs=rngs)


if "tiny_test_net" not in registered_models():
    register_model("tiny_test_net")(_factory)


def tiny_config(**overrides):
    """The demo config (synthetic data) with the tiny net, 16x16 images and the given top-level overrides."""
    import ml_collections

    from configs import demo
    c = demo.get_config()
    c.model_name = "tiny_test_net"
    c.model = ml_collections.ConfigDict({"width": 4, "use_bn": True})
    c.image_size = (16, 16)
    c.source_kwargs.num_examples = 16
    c.batch_size = 4
    c.epochs = 2
    c.eval_every = 1
    c.log_every = 1
    c.fast_compile = False
    for k, v in overrides.items():
        c[k] = v
    return c
