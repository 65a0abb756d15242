"""Inference helpers: sliding-window prediction over whole 3D (or 2D) volumes."""

from lgmsnet_jax.inference.sliding_window import (
    importance_map,
    scan_starts,
    sliding_window_inference,
    window_starts,
)

__all__ = ["importance_map", "scan_starts", "sliding_window_inference", "window_starts"]
