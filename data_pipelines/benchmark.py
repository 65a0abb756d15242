"""Training-pipeline throughput (images/s) by worker count: cached read + augmentation + normalisation + batching.

    python -m data_pipelines.benchmark [--workers 0 2 4 8 16] [--augment kvasir busi] [--read-threads 1] [--json]
    python -m data_pipelines.benchmark --dataset kvasir --data-dir ../shared/data/Kvasir-SEG

Without --data-dir it writes a synthetic 256x256 cache (512 records) to a temporary folder, so it runs anywhere.
The CPU ms/image column (0 workers) is the pipeline's CPU cost per image, which bounds images/s on N free cores
by about N / cost; with --read-threads 1 it is what one worker process pays. A second table times the
augmentation function alone in a tight loop (time.process_time over the cached records).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from data_pipelines import transforms
from data_pipelines.cache import CachedSource
from data_pipelines.pipeline import train_dataset
from data_pipelines.sources import SyntheticSource, load_source


def synthetic_cache(folder: pathlib.Path, n: int, size: tuple[int, int]) -> CachedSource:
    """Writes n synthetic records as a cache entry (images.npy, masks.npy) and returns its source."""
    gen = SyntheticSource(n, size, seed=0)
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (n, *size, 3))
    masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (n, *size))
    for i in range(n):
        ex = gen[i]
        images[i], masks[i] = ex["image"], ex["mask"]
    images.flush(), masks.flush()
    return CachedSource(folder, range(n), gen.ids)


def measure(src, *, workers: int, augment: str, batch_size: int, size: tuple[int, int], seconds: float,
            min_batches: int, read_threads: int | None = None) -> dict:
    """Steady-state images/s of `train_dataset` (after warm-up batches), plus time to the first batch.

    read_threads: record-mapping threads per process (None: the pipeline's default, 4 in-process, 1 per
    worker). With 1 and 0 workers, the CPU ms/image is the single-core cost that a worker process pays.
    """
    ds = train_dataset(src, seed=0, batch_size=batch_size, image_size=size, augment=augment, worker_count=workers,
                       prefetch=8, worker_buffer_size=4, read_threads=read_threads)
    t0 = time.perf_counter()
    it = iter(ds)
    next(it)
    first = time.perf_counter() - t0
    for _ in range(max(2, 2 * workers)):  # let every worker fill its buffer
        next(it)
    n, t1, c1 = 0, time.perf_counter(), time.process_time()
    while n < min_batches or time.perf_counter() - t1 < seconds:
        b = next(it)
        n += 1
    dt, cpu = time.perf_counter() - t1, time.process_time() - c1
    assert b["image"].shape == (batch_size, *size, 3)
    it.close()
    del it
    gc.collect()
    return {"workers": workers, "read_threads": read_threads, "augment": augment, "images_per_s": round(n * batch_size / dt, 1),
            "batches": n, "seconds": round(dt, 2), "first_batch_s": round(first, 2),
            # CPU time of this process (all threads) per image: with 0 workers it is the whole pipeline's cost,
            # which does not depend on other load on the machine and bounds images/s on N free cores by N / cost.
            "cpu_ms_per_image": round(1e3 * cpu / (n * batch_size), 2) if workers == 0 else None}


def measure_transform(src, *, augment: str, seconds: float) -> dict:
    """CPU ms per call of the augmentation function alone over the source's records (per-record generators)."""
    fn = transforms.RECIPES[augment]
    records = [src[i] for i in range(min(len(src), 64))]
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < len(records):
        r = records[n % len(records)]
        if fn is not None:
            fn(r["image"], r["mask"], np.random.default_rng(n))
        n += 1
    return {"augment": augment, "calls": n, "cpu_ms_per_image": round(1e3 * (time.process_time() - c0) / n, 3)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    p.add_argument("--augment", nargs="+", default=["kvasir", "busi"], choices=list(transforms.RECIPES))
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--records", type=int, default=512, help="synthetic records")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per setting")
    p.add_argument("--min-batches", type=int, default=10)
    p.add_argument("--read-threads", type=int, default=None,
                   help="record-mapping threads per process (default: 4 in-process, 1 per worker process)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    a = p.parse_args(argv)
    size = (a.image_size, a.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        if a.data_dir:
            src = load_source(a.dataset, a.data_dir, "train", fold=1, image_size=size,
                              cache_dir=a.cache_dir or pathlib.Path(tmp) / "cache")
        else:
            src = synthetic_cache(pathlib.Path(tmp), a.records, size)
        rows = [measure(src, workers=w, augment=aug, batch_size=a.batch_size, size=size, seconds=a.seconds,
                        min_batches=a.min_batches, read_threads=a.read_threads) for aug in a.augment for w in a.workers]
        alone = [measure_transform(src, augment=aug, seconds=a.seconds / 2) for aug in a.augment]
    meta = {"command": "python -m data_pipelines.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpus": os.cpu_count(),
            "machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "dataset": a.data_dir and a.dataset or f"synthetic cache ({a.records} records)",
            "image_size": a.image_size, "batch_size": a.batch_size, "read_threads": a.read_threads}
    if a.json:
        print(json.dumps({"meta": meta, "results": rows, "transform_alone": alone}, indent=1))
    else:
        threads = "default" if a.read_threads is None else a.read_threads
        print(f"# {meta['date']}  {meta['cpus']} CPUs ({meta['processor']})  {meta['dataset']}  "
              f"{a.image_size}x{a.image_size}  batch {a.batch_size}  read threads {threads}")
        print("| augment | workers | images/s | first batch (s) | CPU ms/image (0 workers) |")
        print("|---|---|---|---|---|")
        for r in rows:
            cpu = "" if r["cpu_ms_per_image"] is None else f"{r['cpu_ms_per_image']:.2f}"
            print(f"| {r['augment']} | {r['workers']} | {r['images_per_s']:.0f} | {r['first_batch_s']:.1f} | {cpu} |")
        print("| augment | transform alone: CPU ms/image |")
        print("|---|---|")
        for r in alone:
            print(f"| {r['augment']} | {r['cpu_ms_per_image']:.2f} |")
        print(f"# load average at end: {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
