"""Split files: the versioned reference splits in data_pipelines/splits/ and seeded splits written to disk.

Reference split files have CRLF line endings (SOURCES.md); every reader here strips whitespace.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Sequence

import numpy as np

SPLITS_DIR = pathlib.Path(__file__).resolve().parent / "splits"


def read_ids(path: pathlib.Path | str) -> list[str]:
    """Ids in a split file, one per line; strips CR/LF and blank lines, keeps order, drops repeats."""
    out, seen = [], set()
    for line in pathlib.Path(path).read_text().splitlines():
        s = line.strip()
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def reference_split_file(dataset: str, split: str, fold: int | None, data_dir: pathlib.Path | None = None
                         ) -> pathlib.Path:
    """Path of a reference split file: `<data_dir>/splits/<file>` if present, else the packaged copy.

    Args:
      dataset: "busi" | "isic18" | "tnscui" | "kvasir".
      split: "train" | "val" for busi/isic18/tnscui; "pranet_train" | "pranet_test" for kvasir.
      fold: 1..3 for busi/isic18/tnscui; ignored for kvasir.
      data_dir: dataset folder; its own splits/ folder takes precedence.
    """
    if dataset == "kvasir":
        name = f"{split}.txt"
    else:
        if fold not in (1, 2, 3):
            raise ValueError(f"{dataset}: fold must be 1, 2 or 3 (the reference's three splits), got {fold!r}")
        name = f"{dataset}_{split}{fold}.txt"
    candidates = [SPLITS_DIR / dataset / name]
    if data_dir is not None:
        candidates.insert(0, pathlib.Path(data_dir) / "splits" / name)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"split file {name} not found in {[str(c.parent) for c in candidates]}")


def seeded_split(ids: Sequence[str], seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 names: Sequence[str] = ("train", "val", "test")) -> dict[str, list[str]]:
    """Seeded, stratification-free split of `ids` (DUCK-Net-style 80/10/10 by default).

    The ids are sorted first, so the result depends only on the set of ids and the seed.
    Part sizes are floor(f * n) for all parts but the first, which takes the remainder.

    Args:
      ids: example ids.
      seed: permutation seed (numpy PCG64).
      fractions: one fraction per part, summing to 1.
      names: part names.

    Returns:
      {name: sorted list of ids}.
    """
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions} must match names {names} and sum to 1")
    ids = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    sizes = [int(np.floor(f * len(ids))) for f in fractions[1:]]
    sizes.insert(0, len(ids) - sum(sizes))
    out, start = {}, 0
    for name, size in zip(names, sizes):
        out[name] = sorted(ids[i] for i in perm[start:start + size])
        start += size
    return out


def write_split(path: pathlib.Path | str, parts: dict[str, list[str]], **meta) -> pathlib.Path:
    """Writes a split as JSON `{"meta": {...}, "parts": {name: [ids]}}` (atomic rename).

    Args:
      path: output file.
      parts: {part name: ids}.
      **meta: provenance recorded in the file (seed, fractions, dataset, ...).

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{np.random.default_rng().integers(1 << 30)}")
    tmp.write_text(json.dumps({"meta": meta, "parts": parts}, indent=1))
    tmp.replace(path)
    return path


def read_split(path: pathlib.Path | str) -> dict[str, list[str]]:
    """Reads a split written by `write_split` -> {part name: ids}."""
    return json.loads(pathlib.Path(path).read_text())["parts"]


def load_or_make_split(path: pathlib.Path | str, ids: Sequence[str], *, seed: int,
                       fractions: Sequence[float], names: Sequence[str], **meta) -> dict[str, list[str]]:
    """Reads the split at `path` if it exists (so a run repeats exactly), else makes and writes it."""
    path = pathlib.Path(path)
    if path.is_file():
        return read_split(path)
    parts = seeded_split(ids, seed, fractions, names)
    write_split(path, parts, seed=seed, fractions=list(fractions), **meta)
    return parts


def ids_digest(ids: Sequence[str]) -> str:
    """Short stable hash of a set of ids (names split files so different folders don't collide)."""
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:10]
