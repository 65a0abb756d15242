"""A pytree of arrays packed into one flat buffer per dtype: a few call arguments instead of hundreds.

Each argument of a jitted call costs host time at dispatch (about 1-2 us per array, measured on CPU), and a pytree of
`nnx.Variable` containers costs more: their flatten/unflatten functions run in Python (2.7-5.6 ms per call for the
2D TrainState's 559 arrays on the CI box, `scripts/state_pytree_cost.py`). LGMSNet's eval state has 325 arrays (2D),
a noticeable share of a ~1 ms batch-1 forward; the train state's host time is a few ms against a 10-20 ms step.
Inside a jitted function the buffers are sliced back into the original arrays (static slices, fused by XLA) and, for
a train step, the new state concatenated into new buffers (the donated ones are reused).

Used by the inference call (`inference/predict2d.py`; with `xla_options.CUDA_GRAPHS` it took the bf16 batch-1
latency on an H200 from 3.5 ms to about 1.0 ms) and by the training loop's step (`training/step.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OTHER = "_other"  # leaves that are not plain numeric arrays (typed PRNG keys) travel as they are, in a list


def _is_key(dtype: Any) -> bool:
    return dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """How to rebuild the tree: for each leaf its buffer (dtype name) and (offset, shape), or an unpacked index."""

    treedef: Any
    slots: tuple[tuple[str, int, tuple[int, ...]] | tuple[str, int], ...]

    def pack(self, tree: Any) -> dict[str, Any]:
        """The buffers of `tree`, which must have this spec's structure, shapes and dtypes (works inside jit)."""
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            raise ValueError(f"tree structure {treedef} does not match the packing spec's {self.treedef}")
        groups: dict[str, list[jax.Array]] = {}
        packed: dict[str, Any] = {OTHER: []}
        for slot, leaf in zip(self.slots, leaves):
            if slot[0] == OTHER:
                packed[OTHER].append(leaf)
            else:
                groups.setdefault(slot[0], []).append(jnp.ravel(jnp.asarray(leaf, slot[0])))
        packed.update({name: jnp.concatenate(parts) for name, parts in groups.items()})
        return packed

    def unpack(self, packed: dict[str, Any]) -> Any:
        """Rebuilds the tree from `pack`'s buffers (works on traced values inside jit)."""
        leaves = []
        for slot in self.slots:
            if slot[0] == OTHER:
                leaves.append(packed[OTHER][slot[1]])
            else:
                name, offset, shape = slot
                leaves.append(jax.lax.slice(packed[name], (offset,), (offset + math.prod(shape),)).reshape(shape))
        return jax.tree.unflatten(self.treedef, leaves)


def spec_of(tree: Any) -> PackSpec:
    """The packing of `tree` (arrays or `jax.ShapeDtypeStruct`s): leaves grouped by dtype, in tree order."""
    leaves, treedef = jax.tree.flatten(tree)
    sizes: dict[str, int] = {}
    others = 0
    slots = []
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if _is_key(dtype):
            slots.append((OTHER, others))
            others += 1
            continue
        name = np.dtype(dtype).name
        shape = tuple(int(s) for s in np.shape(leaf))
        slots.append((name, sizes.get(name, 0), shape))
        sizes[name] = sizes.get(name, 0) + math.prod(shape)
    return PackSpec(treedef, tuple(slots))


@functools.lru_cache(maxsize=16)
def jitted(spec: PackSpec, sharding: Any = None) -> tuple[Any, Any]:
    """Jitted (pack, unpack) of `spec`, one dispatch each instead of one per leaf; outputs on `sharding` if given."""
    out = {"out_shardings": sharding} if sharding is not None else {}
    return jax.jit(spec.pack, **out), jax.jit(spec.unpack, **out)


def pack(tree: Any) -> tuple[dict[str, Any], PackSpec]:
    """Concatenates the tree's numeric leaves into one 1-D buffer per dtype.

    Args:
      tree: pytree of arrays (e.g. an nnx.State). Leaves that are not plain numeric arrays (PRNG keys) are kept
        as they are, in a list under "_other".

    Returns:
      (buffers {dtype name: (n,) array, "_other": [...]}, PackSpec to `unpack` them).
    """
    spec = spec_of(tree)
    return spec.pack(tree), spec
