"""Metric writers: JSON lines, TensorBoard event files (no TensorFlow), PNG prediction grids, progress bar."""
from lgmsnet_jax.training.writers.images import encode_png, prediction_grid
from lgmsnet_jax.training.writers.jsonl import JsonlWriter, read_jsonl
from lgmsnet_jax.training.writers.progress import Progress, QuietLibraries
from lgmsnet_jax.training.writers.tensorboard import EventWriter, read_events

__all__ = ["EventWriter", "JsonlWriter", "Progress", "QuietLibraries", "encode_png", "prediction_grid", "read_events", "read_jsonl"]
