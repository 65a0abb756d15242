"""Cheap inference calls: the model state packed into one flat buffer per dtype, and CUDA graphs over the convs.

Each argument of a jitted call costs host time at dispatch (about 1-2 us per array, measured on CPU); LGMSNet's eval
state has 325 arrays (2D), i.e. a noticeable share of a ~1 ms batch-1 forward. Inside the jitted function the
buffers are sliced back into the original arrays (static slices, fused by XLA).

A batch-1 forward is also ~285 GPU kernels of ~2 us each (0.8 ms of kernel time, BENCHMARKS.md): launching them
one by one costs more than running them. XLA records fusions and library calls into CUDA graphs by default, but not
convolutions, and LGMSNet is mostly convolutions; `xla_options.CUDA_GRAPHS` adds them. On an H200 the two together took
the bf16 batch-1 latency from 3.5 ms (state tree, default graphs) to about 1.0 ms.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """How to rebuild the tree: for each leaf its buffer (dtype name) and (offset, shape), or an unpacked index."""

    treedef: Any
    slots: tuple[tuple[str, int, tuple[int, ...]] | tuple[str, int], ...]

    def unpack(self, packed: dict[str, Any]) -> Any:
        """Rebuilds the tree from `pack`'s buffers (works on traced values inside jit)."""
        leaves = []
        for slot in self.slots:
            if slot[0] == "_other":
                leaves.append(packed["_other"][slot[1]])
            else:
                name, offset, shape = slot
                leaves.append(jax.lax.slice(packed[name], (offset,), (offset + math.prod(shape),)).reshape(shape))
        return jax.tree.unflatten(self.treedef, leaves)


def pack(tree: Any) -> tuple[dict[str, Any], PackSpec]:
    """Concatenates the tree's numeric leaves into one 1-D buffer per dtype.

    Args:
      tree: pytree of arrays (e.g. an nnx.State). Leaves that are not plain numeric arrays (PRNG keys) are kept
        as they are, in a list under "_other".

    Returns:
      (buffers {dtype name: (n,) array, "_other": [...]}, PackSpec to `unpack` them).
    """
    leaves, treedef = jax.tree.flatten(tree)
    groups: dict[str, list[jax.Array]] = {}
    sizes: dict[str, int] = {}
    other: list[Any] = []
    slots = []
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            slots.append(("_other", len(other)))
            other.append(leaf)
            continue
        name = np.dtype(dtype).name
        shape = tuple(int(s) for s in np.shape(leaf))
        slots.append((name, sizes.get(name, 0), shape))
        sizes[name] = sizes.get(name, 0) + math.prod(shape)
        groups.setdefault(name, []).append(jnp.ravel(jnp.asarray(leaf)))
    packed: dict[str, Any] = {name: jnp.concatenate(parts) for name, parts in groups.items()}
    packed["_other"] = other
    return packed, PackSpec(treedef, tuple(slots))
