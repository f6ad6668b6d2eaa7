"""The train state and the model's parts: trainable, mutable, frozen.

A model's variables split three ways (`split_model`):
  params   `nnx.Param`s not matched by `config.train.frozen`: optimised, EMA'd, checkpointed;
  mutable  non-Param variables a forward pass updates (`nnx.BatchStat`): carried in the state
           and checkpointed, not optimised;
  frozen   everything else: Params matched by `train.frozen` (e.g. a pretrained encoder inside
           the model) and constant non-Param variables (buffers). Frozen parts travel beside
           the state as their own tree (with the task's frozen parts): not donated, not
           optimised, not EMA'd, written once per work dir rather than with every checkpoint.

`TrainState` holds what each step reads and writes; `params`, `opt_state`, `ema` keep the
Variables (their `logical_axes` metadata decides the sharding); `step` is an int32 scalar,
`rng` a raw uint32 PRNG key. The model's structure (`graphdef`) is static and lives outside.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array
    rng: jax.Array
    mutable: Any = None


def path_text(path) -> str:
    return "/".join(str(p) for p in path)


def split_model(model: nnx.Module, frozen: Sequence[str] = ()):
    """(graphdef, params, mutable, frozen) of `model` (see the module docstring); `frozen` are
    regular expressions searched in each parameter's '/'-joined path."""
    patterns = [re.compile(p) for p in frozen]

    def trainable(path, value):
        return isinstance(value, nnx.Param) and not any(p.search(path_text(path)) for p in patterns)

    graphdef, params, mutable, rest = nnx.split(model, trainable, nnx.BatchStat, ...)
    for p in patterns:
        if not any(p.search(path_text(path)) for path, _ in nnx.to_flat_state(rest)):
            raise ValueError(f"config.train.frozen: {p.pattern!r} matches no parameter of the model; "
                             f"parameter paths look like {path_text(next(iter(nnx.to_flat_state(params)))[0])!r}")
    return graphdef, params, mutable, rest


def tree_path_text(keypath) -> str:
    """A pytree key path of a params tree as 'encoder/blocks/0/qkv/kernel' (as `path_text`)."""
    parts = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        # GetAttrKey (a Variable's .value) names no parameter
    return "/".join(parts)


def scale_by_path(inner: optax.GradientTransformation,
                  multipliers: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    """`inner` with each parameter's update multiplied by the factor of the first regular
    expression that matches its path ('encoder/blocks/0/qkv/kernel'; unmatched: 1). Around
    AdamW this is a per-group learning rate (torch's param groups, e.g. an encoder at 1/40
    of the decoder's rate), decoupled weight decay included. The state is `inner`'s own, so
    checkpoints do not change structure and a resumed run may change the multipliers."""
    rules = [(re.compile(p), float(f)) for p, f in multipliers]
    if not rules:
        return inner

    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)

        def scale(keypath, u):
            factor = next((f for p, f in rules if p.search(tree_path_text(keypath))), 1.0)
            return u if factor == 1.0 else u * jnp.asarray(factor, u.dtype)
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(inner.init, update)


# A warm-up takes at most this share of a run. The digits configs warm up for 200 steps (<= 1/8 of
# their runs); a short run of the same config (`--config.train.steps=300`, a smoke test) would
# otherwise end before its learning rate ever rose (100 steps of a 200-step warm-up gave noise).
WARMUP_MAX_FRACTION = 0.25


def effective_warmup(warmup_steps: int, steps: int) -> int:
    """`train.warmup_steps`, shortened to a quarter of `train.steps` when the run is shorter than
    four warm-ups. Every run with steps >= 4 x warmup_steps (each shipped config's full run) keeps
    its configured warm-up, so its schedule, and the resumption of its work dirs, are unchanged."""
    return min(warmup_steps, int(steps * WARMUP_MAX_FRACTION))


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup (`effective_warmup`), then constant or cosine decay, and global-norm
    clipping; `train.lr_multipliers` ((regex, factor), ...) scales the rate of the parameters it matches."""
    lr, steps = train_cfg.lr, train_cfg.steps
    warmup = effective_warmup(train_cfg.warmup_steps, steps)
    if train_cfg.lr_schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1), lr * 0.1)
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [max(warmup, 1)])
    # Clipping is always in the chain (inf = off) so the optimizer state has one structure
    # whatever grad_clip is, and a resumed run may change it.
    clip = optax.clip_by_global_norm(train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf"))
    adamw = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay)
    adamw = scale_by_path(adamw, tuple(train_cfg.get("lr_multipliers", ()) or ()))
    return optax.chain(clip, adamw), schedule


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int, frozen: Sequence[str] = ()):
    """(graphdef, TrainState, frozen model state) for a freshly built or loaded model."""
    graphdef, params, mutable, rest = split_model(model, frozen)
    ema = jax.tree.map(jnp.copy, params)
    state = TrainState(params=params, opt_state=tx.init(params), ema=ema,
                       step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed), mutable=mutable)
    return graphdef, state, rest
