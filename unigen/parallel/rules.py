"""Rule tables (logical axis name -> mesh axes) and the presets (docs/design.md §7).

A rule table is plain data, a tuple of `(logical_name, mesh_axes)` pairs in the style
of big_vision / MaxText: `mesh_axes` is a mesh axis name, a tuple of them, or None.
Names not listed are replicated. The same table serves parameters and activations;
`logical.spec_for_shape` resolves a whole array left to right and uses each mesh axis
at most once, so in `("batch", "length", "embed")` the batch dimension takes `fsdp`
first and `embed -> fsdp` only applies to the (batch-free) parameters. That one rule
is what turns data parallelism into ZeRO-3: weights are stored split along `embed`
and all-gathered just before use, and their gradients are reduce-scattered back.

Presets:
  "dp"       pure data parallel: batch over data x fsdp, everything else replicated.
  "fsdp"     ZeRO-3 (Rajbhandari et al. 2020): as dp, plus every parameter (hence
             its gradient, optimizer moments and EMA) split over `fsdp` along its
             first dimension named embed / mlp / heads / vocab.
  "fsdp_tp"  FSDP + Megatron tensor parallel (Shoeybi et al. 2019): heads and mlp on
             `tensor` (column-parallel in, row-parallel out), embed on `fsdp`.
  "cp"       context parallel: the token axis `length` of activations on `context`;
             parameters ZeRO-3-split over fsdp x context (context devices hold the
             same weights, so they can share the storage); the loader splits
             examples over context devices too.

`input_batch` is the leading axis of arrays as they come from the data loader; it
names every mesh axis over which devices see *different* examples.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from jax.sharding import PartitionSpec as P

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_BATCH = ("data", "fsdp")

PRESETS: dict[str, Rules] = {
    "dp": (
        ("input_batch", _BATCH),
        ("batch", _BATCH),
    ),
    "fsdp": (
        ("input_batch", _BATCH),
        ("batch", _BATCH),
        ("embed", "fsdp"),
        ("mlp", "fsdp"),
        ("heads", "fsdp"),
        ("vocab", "fsdp"),
    ),
    "fsdp_tp": (
        ("input_batch", _BATCH),
        ("batch", _BATCH),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
    ),
    "cp": (
        ("input_batch", _BATCH + ("context",)),
        ("batch", _BATCH),
        ("length", "context"),
        ("embed", ("fsdp", "context")),
        ("mlp", ("fsdp", "context")),
        ("heads", ("fsdp", "context")),
        ("vocab", ("fsdp", "context")),
    ),
}

# The logical names models use (documentation for rule authors; names outside a table
# are simply replicated). `layers` is the leading axis nnx.scan adds to stacked params.
KNOWN_NAMES = frozenset(
    {"batch", "input_batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers",
     "patch", "channels", "classes", "norm", "height", "width"}
)


def get_rules(rules: str | Sequence | Mapping) -> Rules:
    """A rule table from a preset name, a sequence of pairs, or a {name: axes} mapping."""
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(
                f"unknown sharding preset {rules!r}; choose one of {sorted(PRESETS)} "
                f"or pass a table of (logical_name, mesh_axes) pairs"
            )
        return PRESETS[rules]
    pairs = tuple(rules.items()) if isinstance(rules, Mapping) else tuple(rules)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(
                f"rule {pair!r} is not a (logical_name, mesh_axes) pair; mesh_axes is a "
                f"mesh axis name, a tuple of them, or None"
            )
    return tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in pairs)


RegexRules = tuple[tuple[str, "P | tuple[str | None, ...]"], ...]


def match_regex(path: str, regex_rules: Sequence[tuple[str, object]]):
    """First `(pattern, target)` whose pattern `re.search`es the '/'-joined path, or None.

    `target` is a PartitionSpec (mesh axes, used as given) or a tuple of logical names
    (resolved through the rule table) for parameters that carry no `logical_axes`.
    """
    for pattern, target in regex_rules:
        if re.search(pattern, path):
            return target
    return None
