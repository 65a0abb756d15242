"""Grain pipelines: infinite, seeded, augmented training batches and padded one-pass evaluation batches.

Every random choice is a function of (seed, position in the global stream), so batches are identical with any
worker count, the global batch of a step is the same with any process count (each process holds its rows), and a
stream can start at any step (`start_step`) or continue from a saved iterator state.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines import transforms, workers

log = logging.getLogger(__name__)

AUGMENTATIONS = tuple(transforms.RECIPES)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """ceil(num_examples / global_batch_size), like len() of the reference's DataLoader (last batch kept)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return math.ceil(num_examples / global_batch_size)


class ProcessRows(grain.MapDataset):
    """This process's rows of every global batch: local record m is global record
    (m // b) * b * shard_count + shard_index * b + m % b, with b the per-process batch size.

    So process k's j-th batch is rows [k*b, (k+1)*b) of the global stream's j-th batch of b*shard_count records,
    whatever the number of processes.
    """

    def __init__(self, parent: grain.MapDataset, batch_size: int, shard_index: int, shard_count: int):
        super().__init__(parent)
        self._b, self._k, self._n = batch_size, shard_index, shard_count

    def __len__(self) -> int:
        return len(self._parent) // (self._b * self._n) * self._b

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        j, r = divmod(index, self._b)
        return self._parent[(j * self._n + self._k) * self._b + r]

    def __str__(self) -> str:
        return f"ProcessRows(batch_size={self._b}, shard_index={self._k}, shard_count={self._n})"


def _mark_flags_parsed() -> None:
    # google/grain#1360: mp_prefetch reads Grain's absl flags, which fail before parsing outside absl.app.run.
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TrainMap(grain.transforms.RandomMap):
    """Per-record training transform: resize (if needed) and augment; uint8 out (normalised when batched).

    Output: {"image": uint8 (H, W, 3) (possibly a strided view), "mask": uint8 (H, W) in {0, 1}}.
    """

    def __init__(self, augment: str, image_size: Sequence[int]):
        if augment not in transforms.RECIPES:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.augment, self.image_size = augment, tuple(image_size)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image, mask = transforms.resize_example(element["image"], element["mask"], self.image_size)
        fn = transforms.RECIPES[self.augment]
        if fn is not None:
            image, mask = fn(image, mask, rng)
        return {"image": image, "mask": mask}


class NormalizeBatch:
    """Grain `batch_fn`: stacks records straight into float32 batch arrays, normalising on the way.

    One allocation per batch and no per-record float temporaries: per-record float arrays plus np.stack cost
    about 3x more CPU (page faults on fresh 0.8 MB buffers) than the augmentation of a BUSI record itself.

    Returns:
      {"image": float32 (B, H, W, 3), "mask": float32 (B, H, W, 1)} plus any scalar keys, stacked.
    """

    def __init__(self, normalize: str):
        if normalize not in transforms.NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {transforms.NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize

    def __call__(self, records: Sequence[dict]) -> dict:
        h, w = records[0]["mask"].shape
        image = np.empty((len(records), h, w, 3), np.float32)
        mask = np.empty((len(records), h, w, 1), np.float32)
        for i, r in enumerate(records):
            transforms.normalize_into(image[i], r["image"], self.normalize)
            mask[i, ..., 0] = r["mask"]
        out = {"image": image, "mask": mask}
        for k in records[0]:
            if k not in out:
                out[k] = np.stack([r[k] for r in records])
        return out


def _starting_workers(settings: dict[str, Any]):
    """Context for calls that may start Grain worker processes or the threads that start them: SIGTERM and SIGINT
    blocked in this thread meanwhile, so they inherit them blocked (`workers` says why; a signal arriving then waits,
    pending, for the end of the call, or reaches another thread). A no-op without workers."""
    return workers.stop_signals_blocked() if settings.get("worker_count") else contextlib.nullcontext()


class CheckedIterDataset(grain.IterDataset):
    """Wraps a pipeline so its iterator's state records the pipeline settings and refuses a mismatched restore."""

    def __init__(self, parent: grain.IterDataset, settings: dict[str, Any]):
        super().__init__(parent)
        self._settings = settings

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def __iter__(self) -> "CheckedIterator":
        with _starting_workers(self._settings):
            return CheckedIterator(self._parent.__iter__(), self._settings)

    def __str__(self) -> str:
        return f"CheckedIterDataset({self._settings})"


class CheckedIterator(grain.DatasetIterator):
    """Iterator whose `get_state()` is {"pipeline": settings, "iterator": Grain state} (JSON-able).

    `set_state` raises ValueError naming every setting that differs (worker_count, shard_count, seed, ...):
    Grain's state is only meaningful for the pipeline that produced it.
    """

    def __init__(self, parent: grain.DatasetIterator, settings: dict[str, Any]):
        super().__init__(parent)
        self._settings = settings

    def __next__(self):
        # Grain starts worker processes lazily, from threads it starts inside these calls, at any element.
        with _starting_workers(self._settings):
            return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self._settings), "iterator": self._parent.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("pipeline") if isinstance(state, dict) else None
        if saved is None or "iterator" not in state:
            raise ValueError("iterator state has no 'pipeline' settings; it was not saved by "
                             "data_pipelines.train_dataset and cannot be restored here")
        diff = {k: (saved.get(k), v) for k, v in self._settings.items() if saved.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot restore the data iterator: pipeline settings differ ({lines}). Restart with the "
                             f"saved settings (worker and process counts included) to resume exactly.")
        with _starting_workers(self._settings):
            self._parent.set_state(state["iterator"])

    def close(self) -> None:
        self._parent.close()


def train_dataset(src, *, seed: int, batch_size: int, image_size: Sequence[int] = (256, 256),
                  augment: str = "busi", normalize: str = "imagenet", shard_index: int = 0, shard_count: int = 1,
                  start_step: int = 0, worker_count: int = 0, prefetch: int = 4, read_threads: int | None = None,
                  worker_buffer_size: int = 2) -> CheckedIterDataset:
    """Infinite training stream of augmented, normalised batches.

    Order: seeded shuffle of all records, reshuffled every epoch -> repeat -> per-record augmentation (rng from
    seed and global stream position) -> this process's rows of each global batch of batch_size * shard_count
    records (`ProcessRows`) -> batch on the MapDataset -> skip `start_step` batches -> prefetch (threads, or
    `worker_count` processes). One process with batch 16 and two with batch 8 see the same global batches.

    Args:
      src: random-access source (`load_source`); records {"image" uint8 (H, W, 3), "mask" uint8 (H, W)}.
      seed: pipeline seed.
      batch_size: per-process batch size.
      image_size: (h, w) of the batches (records of another size are resized, slowly: cache at this size).
      augment: "busi" (BUSI/ISIC/TNSCUI recipe), "kvasir" or "none".
      normalize: "imagenet", "reference_bgr" (exact reference input, BGR) or "unit".
      shard_index, shard_count: this process and the number of processes (pass jax.process_index()/count()).
      start_step: the first global step of the stream (resuming at a step needs no saved iterator state).
      worker_count: Grain worker processes (0 = in-process).
      prefetch: batches buffered ahead (in-process).
      read_threads: threads per process mapping records (default 4 in-process, 1 per worker process).
      worker_buffer_size: batches buffered per worker process.

    Returns:
      An IterDataset; iter() gives a checkpointable iterator of {"image": float32 (B, H, W, 3),
      "mask": float32 (B, H, W, 1)}.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must be in [0, {shard_count})")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    n = len(src)
    if n < batch_size * shard_count:
        raise ValueError(f"{n} records, fewer than the global batch {batch_size} x {shard_count} process(es)")
    ds = (grain.MapDataset.source(src).seed(int(seed)).shuffle().repeat(None)
          .random_map(TrainMap(augment, image_size)))
    ds = ProcessRows(ds, batch_size, shard_index, shard_count).batch(batch_size, drop_remainder=True,
                                                                     batch_fn=NormalizeBatch(normalize))
    if start_step:
        ds = ds[start_step:]
    threads = read_threads if read_threads is not None else (1 if worker_count else 4)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if worker_count > 0:
        _mark_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                         per_worker_buffer_size=worker_buffer_size),
                            worker_init_fn=workers.ignore_foreign_stop_signals)
    settings = {"seed": int(seed), "batch_size": int(batch_size), "image_size": [int(s) for s in image_size],
                "augment": augment, "normalize": normalize, "num_records": int(n), "shard_index": int(shard_index),
                "shard_count": int(shard_count), "start_step": int(start_step), "worker_count": int(worker_count)}
    return CheckedIterDataset(it, settings)


class _PaddedShard:
    """Shard `shard_index` of src, padded to `length` with zero records (valid=0, index=-1)."""

    def __init__(self, src, shard_index: int, shard_count: int, length: int):
        self.src, self.shard_index, self.shard_count, self.length = src, shard_index, shard_count, length
        self.real = len(range(shard_index, len(src), shard_count))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int) -> dict:
        if j < self.real:
            i = self.shard_index + j * self.shard_count
            ex = self.src[i]
            return {"image": ex["image"], "mask": ex["mask"], "valid": np.float32(1), "index": np.int32(i)}
        ex = self.src[0]
        return {"image": np.zeros_like(ex["image"]), "mask": np.zeros_like(ex["mask"]), "valid": np.float32(0),
                "index": np.int32(-1)}


class EvalMap(grain.transforms.Map):
    """Resize (if needed); carries "valid" and "index" (normalised when batched)."""

    def __init__(self, image_size: Sequence[int]):
        self.image_size = tuple(image_size)

    def map(self, element: dict) -> dict:
        image, mask = transforms.resize_example(element["image"], element["mask"], self.image_size)
        return {"image": image, "mask": mask, "valid": element["valid"], "index": element["index"]}


def eval_batch_count(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
    """Batches per process in `eval_dataset` (equal on every process so multi-host evaluation stays in step)."""
    return math.ceil(math.ceil(num_examples / shard_count) / batch_size)


def eval_dataset(src, *, batch_size: int, image_size: Sequence[int] = (256, 256), normalize: str = "imagenet",
                 shard_index: int = 0, shard_count: int = 1, read_threads: int = 4, prefetch: int = 4):
    """One pass over src in order, in fixed-shape batches; the last one padded.

    Process `shard_index` gets records shard_index::shard_count; every process yields `eval_batch_count(...)`
    batches.

    Returns:
      An iterable of {"image": float32 (B, H, W, 3), "mask": float32 (B, H, W, 1), "valid": float32 (B,)
      (1 real, 0 padding), "index": int32 (B,) (record index in src, -1 for padding)}.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must be in [0, {shard_count})")
    length = eval_batch_count(len(src), batch_size, shard_count) * batch_size
    ds = (grain.MapDataset.source(_PaddedShard(src, shard_index, shard_count, length))
          .map(EvalMap(image_size)).batch(batch_size, drop_remainder=True, batch_fn=NormalizeBatch(normalize)))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
