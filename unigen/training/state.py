"""The train state: one pytree holding everything a step reads and writes.

`params`, `opt_state` and `ema` are trees of `nnx.Param` Variables (their `logical_axes`
metadata decides the sharding); `step` is an int32 scalar; `rng` a raw uint32 PRNG key.
The model's structure (`graphdef`) is static and lives outside, in the step's closure.
"""

from __future__ import annotations

from typing import Any

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


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup, then constant or cosine decay, and global-norm clipping."""
    lr, warmup, steps = train_cfg.lr, train_cfg.warmup_steps, train_cfg.steps
    if train_cfg.lr_schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1), lr * 0.1)
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [max(warmup, 1)])
    # Clipping is always in the chain (inf = off) so the optimizer state has one structure
    # whatever grad_clip is, and a resumed run may change it.
    clip = optax.clip_by_global_norm(train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf"))
    adamw = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay)
    return optax.chain(clip, adamw), schedule


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int):
    """(graphdef, TrainState) for a freshly built or loaded model."""
    graphdef, params = nnx.split(model, nnx.Param)
    ema = jax.tree.map(jnp.copy, params)
    state = TrainState(params=params, opt_state=tx.init(params), ema=ema,
                       step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed))
    return graphdef, state
