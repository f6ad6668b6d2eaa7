"""Sharding by name: meshes, rule tables, sharded state and batches, multi-process.

Typical use in a trainer::

    initialize()                                   # multi-process start-up (no-op alone)
    mesh = make_mesh({"data": -1, "fsdp": 8})
    rules = get_rules("fsdp")
    state_sh = train_state_shardings(abstract_state, mesh, rules)
    step = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, None), donate_argnums=0)
    # inside train_step: `with use_rules(mesh, rules): ...` so `constrain` applies
    batch = put_batch(local_numpy_batch, mesh, rules)
"""

from unigen.parallel.batch import (
    batch_sharding,
    batch_spec,
    batch_ways,
    loader_shard_info,
    local_batch_size,
    process_shard_info,
    put_batch,
)
from unigen.parallel.distributed import initialize, is_initialized, shutdown
from unigen.parallel.hlo import collective_stats
from unigen.parallel.logical import (
    active_rules,
    constrain,
    logical_to_spec,
    spec_for_shape,
    use_rules,
)
from unigen.parallel.mesh import MESH_AXES, make_mesh, mesh_shape, resolve_mesh_shape
from unigen.parallel.rules import KNOWN_NAMES, PRESETS, get_rules
from unigen.parallel.state import (
    ShardingReport,
    bytes_per_device,
    logical_axes_of,
    param_specs,
    plan_shardings,
    state_shardings,
    train_state_shardings,
    tree_shardings,
)

__all__ = [
    "MESH_AXES", "KNOWN_NAMES", "PRESETS", "ShardingReport", "active_rules",
    "batch_sharding", "batch_spec", "batch_ways", "bytes_per_device", "collective_stats", "constrain",
    "get_rules", "initialize", "is_initialized", "loader_shard_info", "local_batch_size",
    "logical_axes_of", "logical_to_spec", "make_mesh", "mesh_shape", "param_specs",
    "plan_shardings", "process_shard_info", "put_batch", "resolve_mesh_shape",
    "shutdown", "spec_for_shape", "state_shardings", "train_state_shardings",
    "tree_shardings", "use_rules",
]
