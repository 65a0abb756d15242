"""Input pipelines for the 2D datasets: native-layout readers, validation, decode-once cache, Grain pipelines.

numpy + PIL + Grain/TFDS only (no jax): workers stay light and every random choice is seeded.
"""
from data_pipelines.cache import CachedSource, build_cache, decode_image, decode_mask, default_cache_dir
from data_pipelines.pipeline import (CheckedIterator, eval_batch_count, eval_dataset, steps_per_epoch,
                                     train_dataset)
from data_pipelines.readers import Item, Listing, list_dataset
from data_pipelines.sources import DATASETS, ZERO_SHOT_SETS, SyntheticSource, load_source
from data_pipelines.splitting import read_ids, read_split, seeded_split, write_split
from data_pipelines.transforms import augment_busi, augment_kvasir, denormalize, normalize
from data_pipelines.verify import DataError, Issue

__all__ = [
    "CachedSource", "CheckedIterator", "DATASETS", "DataError", "Issue", "Item", "Listing", "SyntheticSource",
    "ZERO_SHOT_SETS", "augment_busi", "augment_kvasir", "build_cache", "decode_image", "decode_mask",
    "default_cache_dir", "denormalize", "eval_batch_count", "eval_dataset", "list_dataset", "load_source",
    "normalize", "read_ids", "read_split", "seeded_split", "steps_per_epoch", "train_dataset", "write_split",
]
