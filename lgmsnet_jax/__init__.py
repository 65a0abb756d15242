"""LGMSNet in JAX/Flax NNX: models, training core, inference and command-line tools."""

__version__ = "0.1.0"
