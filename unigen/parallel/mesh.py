"""Device meshes with the four unigen axes (docs/design.md §7).

Axis order is fixed: (data, fsdp, tensor, context). The outer axes talk least
(data parallel: one gradient all-reduce per step) and the inner ones most (tensor
and context parallel: collectives inside every layer), so `jax.make_mesh` places the
inner axes on the closest devices (same host / NVLink domain) when it builds a
topology-aware device order.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor", "context")


def _shape_from(spec: Mapping[str, int] | Any) -> dict[str, int]:
    """Read {axis: size} from a mapping or any object with data/fsdp/tensor/context fields."""
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(MESH_AXES))
        if unknown:
            raise ValueError(
                f"make_mesh: unknown mesh axes {unknown}; the axes are {list(MESH_AXES)}"
            )
        return {name: int(spec.get(name, 1)) for name in MESH_AXES}
    missing = [name for name in MESH_AXES if not hasattr(spec, name)]
    if len(missing) == len(MESH_AXES):
        raise ValueError(
            f"make_mesh: expected a mapping or a config with fields {list(MESH_AXES)}, "
            f"got {type(spec).__name__}"
        )
    return {name: int(getattr(spec, name, 1)) for name in MESH_AXES}


def resolve_mesh_shape(spec: Mapping[str, int] | Any, num_devices: int) -> dict[str, int]:
    """Fill a -1 entry and check that the sizes multiply to `num_devices`."""
    shape = _shape_from(spec)
    asked = dict(shape)
    fill = [name for name, size in shape.items() if size == -1]
    bad = [name for name, size in shape.items() if size == 0 or size < -1]
    if bad or len(fill) > 1:
        raise ValueError(
            f"make_mesh: mesh shape {asked} is invalid: sizes must be >= 1 with at most one "
            f"-1 (fill in the rest); offending axes {bad or fill}"
        )
    known = math.prod(size for size in shape.values() if size != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"make_mesh: cannot fill axis {fill[0]!r}: {num_devices} devices are not "
                f"divisible by the product {known} of the other axes in {asked}"
            )
        shape[fill[0]] = num_devices // known
    total = math.prod(shape.values())
    if total != num_devices:
        raise ValueError(
            f"make_mesh: mesh shape {asked} needs {total} devices but {num_devices} are "
            f"available; make the sizes multiply to {num_devices} or set one axis to -1"
        )
    return shape


def make_mesh(
    shape: Mapping[str, int] | Any, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor, context).

    `shape` is a mapping like {"fsdp": -1, "tensor": 2} (missing axes are 1) or a config
    with fields data/fsdp/tensor/context; one entry may be -1 to take the remaining
    devices. `devices` defaults to all devices of all processes (`jax.devices()`), so on
    a multi-process run the mesh spans every host.

    Axis types are `Auto`: sharding is decided by in/out shardings and
    `with_sharding_constraint` (GSPMD/Shardy propagation), not by explicit sharding in
    types (the default of `jax.make_mesh` in recent jax).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape, len(devices))
    axis_shapes = tuple(sizes[name] for name in MESH_AXES)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    try:
        # Topology-aware order (NVLink / ICI rings) where jax knows the topology.
        return jax.make_mesh(axis_shapes, MESH_AXES, axis_types=auto, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Some device subsets (e.g. a hand-picked list) have no known topology: fall back
        # to the given order, process-major, which keeps inner axes within a host.
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = np.asarray(ordered, dtype=object).reshape(axis_shapes)
        return Mesh(grid, MESH_AXES, axis_types=auto)


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    """{axis: size} for the four unigen axes (1 for any the mesh lacks)."""
    return {name: int(mesh.shape.get(name, 1)) for name in MESH_AXES}
