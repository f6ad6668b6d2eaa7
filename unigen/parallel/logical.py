"""Logical axis names -> mesh axes (docs/design.md §7).

Parameters carry their logical axis names as the `logical_axes` metadata of their
`nnx.Param` (e.g. `("embed", "mlp")` for an MLP's first kernel). Activations are
annotated inside the models with `constrain(x, ("batch", "length", "embed"))`.

A *rule table* is a sequence of `(logical_name, mesh_axes)` pairs, `mesh_axes` being a
mesh axis name, a tuple of them, or None (replicated). `use_rules(mesh, rules)` makes a
table active while a function is traced; outside it `constrain` is the identity, so the
same model code runs on one device without any sharding context.
"""

from __future__ import annotations

import contextlib
import threading
import math
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unigen.parallel.rules import get_rules

LogicalAxes = tuple[str | None, ...]
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_active = threading.local()


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Activate `rules` on `mesh` for `constrain` calls traced inside the block."""
    previous = getattr(_active, "value", None)
    _active.value = (mesh, get_rules(rules))
    try:
        yield
    finally:
        _active.value = previous


def active_rules() -> tuple[Mesh, Rules] | None:
    return getattr(_active, "value", None)


def logical_to_spec(axes: LogicalAxes, rules: Rules, mesh: Mesh | None = None) -> P:
    """PartitionSpec for `axes` under `rules`: each logical name takes the first rule
    that names it, and a mesh axis is used at most once (later uses fall back to None).
    Mesh axes of size 1 are dropped, so the spec reads the same on any mesh."""
    table: dict[str, str | tuple[str, ...] | None] = {}
    for name, target in get_rules(rules):
        table.setdefault(name, target)
    used: set[str] = set()
    spec = []
    for name in axes:
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        if mesh is not None:
            targets = tuple(t for t in targets if mesh.shape.get(t, 1) > 1)
        if any(t in used for t in targets):
            targets = ()
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return P(*spec)


def spec_for_shape(
    shape: Sequence[int], axes: LogicalAxes, rules: Rules, mesh
) -> tuple[P, list[str]]:
    """`logical_to_spec` that also respects divisibility (uneven shards would be padded
    by XLA and are rejected for jit arguments). Returns (spec, problems).

    Pass 1 gives each dimension, left to right, its full list of mesh axes when the
    size divides and none of them is taken. Pass 2 lets each dimension left without
    axes because of divisibility take the longest prefix of its axes that divides and
    is still free (e.g. embed=1152 over (fsdp=64, context=4) -> fsdp only). So
    (heads=4, kv, embed=32) under heads/embed -> fsdp=8 splits embed 8 ways rather
    than heads 2 ways. A problem is reported only when an array ends up stored with
    fewer splits than the rules asked for.
    """
    if len(shape) != len(axes):
        raise ValueError(f"array of shape {tuple(shape)} given {len(axes)} axis names {axes}")
    table: dict[str, str | tuple[str, ...] | None] = {}
    for name, target in get_rules(rules):
        table.setdefault(name, target)
    sizes = dict(mesh.shape)
    asked: list[tuple[str, ...]] = []
    for name in axes:
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        unknown = [t for t in targets if t not in sizes]
        if unknown:
            raise ValueError(
                f"rule {name!r} -> {target!r} names mesh axes {unknown} that the mesh "
                f"{dict(sizes)} does not have"
            )
        asked.append(tuple(t for t in targets if sizes[t] > 1))

    def ways(targets):
        return math.prod(sizes[t] for t in targets)

    used: set[str] = set()
    chosen: list[tuple[str, ...]] = [()] * len(shape)
    short: list[int] = []  # dims refused for divisibility in pass 1
    for i, (dim, targets) in enumerate(zip(shape, asked)):
        if not targets or any(t in used for t in targets):
            continue
        if dim % ways(targets):
            short.append(i)
            continue
        chosen[i] = targets
        used.update(targets)
    problems = []
    for i in short:
        prefix = asked[i]
        while prefix and (shape[i] % ways(prefix) or any(t in used for t in prefix)):
            prefix = prefix[:-1]
        chosen[i] = prefix
        used.update(prefix)
        if not set(asked[i]) <= used:
            problems.append(
                f"dim {axes[i]!r} of size {shape[i]} is not divisible by mesh axes "
                f"{asked[i]} (size {ways(asked[i])}); "
                + (f"split over {prefix} only" if prefix else "replicated")
            )
    spec = [None if not t else t[0] if len(t) == 1 else t for t in chosen]
    return P(*spec), problems


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
    """`with_sharding_constraint` by logical names when rules are active; else identity.

    Dimensions not divisible by their mesh axes are left replicated (see
    `spec_for_shape`), so odd sizes in small tests never fail to compile."""
    active = active_rules()
    if active is None:
        return x
    mesh, rules = active
    if x.ndim != len(axes):
        raise ValueError(f"constrain: array of rank {x.ndim} given {len(axes)} axis names {axes}")
    spec, _ = spec_for_shape(x.shape, axes, rules, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
