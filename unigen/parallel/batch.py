"""Placing data-loader batches on the mesh, one process's share at a time.

Each process loads only the examples its own devices need and passes them to
`put_batch`; `jax.make_array_from_process_local_data` stitches the shares into one
global array. Which examples a process needs follows from the rule for `input_batch`
(the loader's leading axis): devices along those mesh axes see different examples,
devices along the others (e.g. `tensor`) see the same ones. `loader_shard_info` turns
that into the (shard_index, shard_count) a data loader splits its source by.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from unigen.parallel.logical import logical_to_spec
from unigen.parallel.rules import get_rules


def process_shard_info() -> tuple[int, int]:
    """(process_index, process_count) of this process."""
    return jax.process_index(), jax.process_count()


def batch_spec(ndim: int, rules, mesh, axes: Sequence[str | None] | None = None) -> P:
    """Spec of a loader array: `axes` are its logical names, by default
    ("input_batch", None, ...), i.e. the leading axis split and the rest whole. Token
    arrays under context parallelism may pass ("input_batch", "length")."""
    if axes is None:
        axes = ("input_batch",) + (None,) * (ndim - 1)
    if len(axes) != ndim:
        raise ValueError(f"batch_spec: {len(axes)} axis names {tuple(axes)} for a rank-{ndim} array")
    return logical_to_spec(tuple(axes), get_rules(rules), mesh)


def batch_sharding(mesh, rules, ndim: int = 1, axes: Sequence[str | None] | None = None):
    """NamedSharding of a loader array (leading axis over the `input_batch` mesh axes)."""
    return NamedSharding(mesh, batch_spec(ndim, rules, mesh, axes))


def _blocks(sharding: NamedSharding, ndim: int) -> dict[int, list[set[int]]]:
    """Per process, per dim: which blocks (shard indices) its devices hold."""
    ways = _ways(sharding, ndim)
    index_map = sharding.devices_indices_map(tuple(ways))  # one element per block
    out: dict[int, list[set[int]]] = {}
    for device, index in index_map.items():
        sets = out.setdefault(device.process_index, [set() for _ in range(ndim)])
        for d, sl in enumerate(index):
            sets[d].add(sl.start or 0)
    return out


def _ways(sharding: NamedSharding, ndim: int) -> list[int]:
    sizes = dict(sharding.mesh.shape)
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    ways = []
    for entry in spec[:ndim]:
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        ways.append(math.prod(sizes[n] for n in names))
    return ways


def batch_ways(mesh, rules) -> int:
    """How many ways the mesh splits a batch (the product of the `input_batch` mesh axes)."""
    return _ways(batch_sharding(mesh, rules, 1), 1)[0]


def loader_shard_info(mesh, rules) -> tuple[int, int]:
    """(shard_index, shard_count) for the data loader of this process.

    shard_count is the number of different example subsets the processes need (equal to
    process_count when every process holds distinct batch rows, smaller when a
    replicated mesh axis such as `tensor` spans processes); processes with the same
    shard_index must load the same examples.
    """
    sharding = batch_sharding(mesh, rules, 1)
    blocks = _blocks(sharding, 1)
    distinct = sorted({tuple(sorted(b[0])) for b in blocks.values()})
    mine = tuple(sorted(blocks[jax.process_index()][0]))
    return distinct.index(mine), len(distinct)


def local_batch_size(global_batch: int, mesh, rules) -> int:
    """Rows of the loader batch this process loads for a global batch size."""
    _, count = loader_shard_info(mesh, rules)
    ways = _ways(batch_sharding(mesh, rules, 1), 1)[0]
    if global_batch % ways:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {ways} devices that "
            f"split the batch (mesh {dict(mesh.shape)}); use a multiple of {ways}"
        )
    return global_batch // count


def put_batch(
    local_batch: Mapping[str, np.ndarray],
    mesh,
    rules,
    axes: Mapping[str, Sequence[str | None]] | None = None,
) -> dict[str, jax.Array]:
    """Global, sharded arrays from this process's share of a batch.

    `local_batch[k]` holds the rows this process's devices need (see
    `loader_shard_info`); `axes[k]` optionally names the logical axes of entry k
    (default: leading `input_batch`, rest replicated).
    """
    axes = axes or {}
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"put_batch: entry {key!r} is a scalar; batch entries need a batch axis")
        sharding = batch_sharding(mesh, rules, value.ndim, axes.get(key))
        ways = _ways(sharding, value.ndim)
        blocks = _blocks(sharding, value.ndim)[jax.process_index()]
        global_shape = []
        for d, (size, w) in enumerate(zip(value.shape, ways)):
            local_blocks = len(blocks[d])
            if size % local_blocks:
                raise ValueError(
                    f"put_batch: entry {key!r} has {size} rows along dim {d} on this process, "
                    f"not divisible by its {local_blocks} local shard(s) of that dim; the "
                    f"global size must be a multiple of {w}"
                )
            global_shape.append(size // local_blocks * w)
        out[key] = jax.make_array_from_process_local_data(sharding, value, tuple(global_shape))
    return out
