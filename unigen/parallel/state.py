"""Shardings for whole state pytrees: params, optimizer state, EMA, step, rng.

Every leaf gets a `NamedSharding`, decided in this order:

1. an `nnx.Variable` carrying `logical_axes` metadata -> the rule table. Under
   `nnx.scan` the stacked parameter has one extra leading dimension, named `layers`.
   optax keeps the Variables (and their metadata) when it builds moments from an
   `nnx.State`, so AdamW's mu/nu and an EMA copy resolve exactly like the params.
2. scalars (step counters, optax `count`) and PRNG keys -> replicated, silently.
3. a leaf whose path ends with the path of a reference parameter and has its shape
   (optimizer moments built from a pure dict of arrays) -> that parameter's sharding.
4. the regex fallback `(pattern, PartitionSpec | logical names)` on the '/'-joined path.
5. anything else -> replicated, and reported once (a warning and `ShardingReport`),
   never silently.

The result has the structure of the input (Variables stay Variables, holding a
sharding as their value), so it can be passed straight to `jax.jit(in_shardings=...,
out_shardings=...)` or `jax.device_put`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from unigen.parallel.logical import spec_for_shape
from unigen.parallel.rules import get_rules, match_regex

log = logging.getLogger("unigen.parallel")
_warned: set[str] = set()

METADATA_KEYS = ("logical_axes", "sharding_names")  # ours first; flax's as a fallback


@dataclasses.dataclass
class ShardingReport:
    """What could not be sharded as asked: path strings with the reason."""

    unmatched: list[str] = dataclasses.field(default_factory=list)
    indivisible: list[str] = dataclasses.field(default_factory=list)
    by_path: list[str] = dataclasses.field(default_factory=list)  # resolved via rule 3/4

    def summary(self) -> str:
        """One short line: counts and the first few paths (the full lists are on the report)."""
        parts = []
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} array(s) without logical axes replicated "
                         f"({', '.join(self.unmatched[:2])}{', ...' if len(self.unmatched) > 2 else ''})")
        if self.indivisible:
            parts.append(f"{len(self.indivisible)} dim(s) not divisible by their mesh axes kept whole "
                         f"({self.indivisible[0].split(':')[0]}{', ...' if len(self.indivisible) > 1 else ''})")
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = []
        if self.unmatched:
            lines.append(
                f"{len(self.unmatched)} array(s) have no logical_axes and match no regex "
                f"rule; replicated: " + ", ".join(self.unmatched)
            )
        if self.indivisible:
            lines.append("not divisible, replicated along that dim: " + "; ".join(self.indivisible))
        return "\n".join(lines)


def path_str(path: Sequence[Any]) -> str:
    """'a/b/0/kernel' for a jax key path (the `.value` of a Variable is not part of it)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _shape_dtype(x):
    value = x.get_value() if _is_var(x) else x
    return getattr(value, "shape", None), getattr(value, "dtype", None)


def logical_axes_of(var: nnx.Variable) -> tuple | None:
    meta = var.get_metadata()
    for key in METADATA_KEYS:
        if meta.get(key) is not None:
            return tuple(meta[key])
    return None


def _axes_for_rank(axes: tuple, shape: tuple, where: str) -> tuple:
    if len(axes) == len(shape):
        return axes
    if len(axes) + 1 == len(shape):  # stacked by nnx.scan / nnx.vmap over layers
        return ("layers",) + axes
    raise ValueError(
        f"{where}: logical_axes {axes} do not fit shape {shape}; give one name per "
        f"dimension (a leading stacked 'layers' dimension is added automatically)"
    )


def param_specs(params, mesh, rules) -> dict[tuple[str, ...], tuple[tuple, P]]:
    """{path parts: (shape, spec)} for every Variable with logical axes in `params`."""
    rules = get_rules(rules)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_var)[0]:
        shape, _ = _shape_dtype(leaf)
        if not _is_var(leaf) or shape is None or logical_axes_of(leaf) is None:
            continue
        axes = _axes_for_rank(logical_axes_of(leaf), tuple(shape), path_str(path))
        spec, _ = spec_for_shape(shape, axes, rules, mesh)
        out[tuple(path_str(path).split("/"))] = (tuple(shape), spec)
    return out


def _by_suffix(parts: tuple[str, ...], shape, reference) -> P | None:
    best, best_len = None, 0
    for ref_parts, (ref_shape, spec) in reference.items():
        n = len(ref_parts)
        if n > best_len and parts[-n:] == ref_parts and tuple(shape) == ref_shape:
            best, best_len = spec, n
    return best


def plan_shardings(
    tree,
    mesh,
    rules,
    regex_rules: Sequence[tuple[str, Any]] = (),
    params=None,
) -> tuple[Any, ShardingReport]:
    """(tree of NamedSharding with `tree`'s structure, ShardingReport).

    `params`: the parameter tree (an `nnx.State` with logical_axes) whose shardings
    other leaves may inherit by path suffix and shape (step 3 above).
    """
    rules = get_rules(rules)
    reference = param_specs(params, mesh, rules) if params is not None else {}
    report = ShardingReport()
    replicated = NamedSharding(mesh, P())

    def one(path, leaf):
        where = path_str(path)
        shape, dtype = _shape_dtype(leaf)
        if shape is None:  # None, python scalars, strings: nothing to place
            sharding = replicated
        else:
            sharding = NamedSharding(mesh, _spec(where, leaf, tuple(shape), dtype))
        return leaf.replace(value=sharding) if _is_var(leaf) else sharding

    def _spec(where, leaf, shape, dtype) -> P:
        axes = logical_axes_of(leaf) if _is_var(leaf) else None
        if axes is not None:
            spec, problems = spec_for_shape(shape, _axes_for_rank(axes, shape, where), rules, mesh)
            report.indivisible.extend(f"{where}: {p}" for p in problems)
            return spec
        if len(shape) == 0 or (dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)):
            return P()
        spec = _by_suffix(tuple(where.split("/")), shape, reference)
        if spec is not None:
            report.by_path.append(where)
            return spec
        target = match_regex(where, regex_rules)
        if target is not None:
            report.by_path.append(where)
            if isinstance(target, P):
                _check_divisible(where, shape, target)
                return target
            spec, problems = spec_for_shape(shape, tuple(target), rules, mesh)
            report.indivisible.extend(f"{where}: {p}" for p in problems)
            return spec
        report.unmatched.append(f"{where}{list(shape)}")
        return P()

    def _check_divisible(where, shape, spec):
        sizes = dict(mesh.shape)
        for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            names = (entry,) if isinstance(entry, str) else tuple(entry or ())
            ways = 1
            for n in names:
                ways *= sizes[n]
            if dim % ways:
                raise ValueError(
                    f"regex rule gives {where} the spec {spec}, but its dim of size {dim} "
                    f"is not divisible by {names} (size {ways}); change the rule"
                )

    shardings = jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)
    message = report.summary()
    if message and message not in _warned:  # once per distinct summary, not per call
        _warned.add(message)
        log.warning("sharding plan: %s (see unigen.parallel.plan_shardings for the full report)", message)
    return shardings, report


def state_shardings(abstract_state, mesh, rules, regex_rules: Sequence[tuple[str, Any]] = ()):
    """NamedShardings for an `nnx.State` (or any tree holding such Variables, e.g. an
    optax state built from it) by the Variables' `logical_axes`."""
    return plan_shardings(abstract_state, mesh, rules, regex_rules)[0]


def tree_shardings(
    tree, mesh, rules, regex_rules: Sequence[tuple[str, Any]] = (), params=None
):
    """NamedShardings for any state tree; leaves without metadata inherit the sharding
    of the `params` leaf whose path they end with (same shape), e.g. optimizer moments
    of a pure-dict parameter tree."""
    return plan_shardings(tree, mesh, rules, regex_rules, params)[0]


def train_state_shardings(
    state, mesh, rules, regex_rules: Sequence[tuple[str, Any]] = (), params=None
):
    """`tree_shardings` for a train-state pytree (dataclass or dict). The reference
    parameters default to its `params` field / key."""
    if params is None:
        if isinstance(state, Mapping):
            params = state.get("params")
        else:
            params = getattr(state, "params", None)
    return tree_shardings(state, mesh, rules, regex_rules, params)


def bytes_per_device(tree, shardings) -> int:
    """Bytes one device holds for `tree` (arrays or ShapeDtypeStructs) under `shardings`
    (the largest shard, i.e. the device with the most)."""
    total = 0
    leaves = jax.tree.leaves(tree)
    sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(sh):
        raise ValueError(f"bytes_per_device: {len(leaves)} leaves but {len(sh)} shardings")
    for leaf, sharding in zip(leaves, sh):
        if not hasattr(leaf, "shape"):
            continue
        shard = sharding.shard_shape(tuple(leaf.shape))
        n = 1
        for d in shard:
            n *= d
        total += n * jnp.dtype(leaf.dtype).itemsize
    return total
