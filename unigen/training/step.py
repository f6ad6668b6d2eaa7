"""The train step: one pure function of (state, frozen, batch) that `jax.jit` compiles once.

Per step: the task's loss (its own times, noise and condition dropout) drawn from one key per
example, split from `fold_in(rng, step)` (so a resumed run draws exactly what an uninterrupted
one would, and `grad_accum` micro-batches draw exactly what the whole batch would), averaged
over the micro-batches with `lax.scan`, AdamW (with clipping), the EMA.
The step knows no model kind and no objective: `task.loss(model, batch, rng, frozen)` does.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from unigen.nn import cpu_custom_vjps
from unigen.training.state import TrainState


def ema_decay_at(step, decay: float):
    """EMA decay with warmup min(decay, (1 + step) / (10 + step)): early averages are not
    dominated by the random init (a short run would otherwise sample from init weights)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(graphdef, task, tx, schedule, *, grad_accum: int = 1, ema_decay: float = 0.9999,
                    custom_vjps: bool = True):
    """`train_step(state, frozen, batch) -> (state, metrics)`; batch = a dict of named arrays
    with a leading batch axis, frozen = {"model": frozen model state, "task": task.frozen()}.

    `custom_vjps`: trace the loss inside `unigen.nn.cpu_custom_vjps()` (faster backward on a
    CPU, a no-op elsewhere), unless the task needs forward mode."""
    fast = custom_vjps and not task.needs_forward_mode

    def loss_fn(params, mutable, frozen, batch, key):
        model = nnx.merge(graphdef, params, mutable, frozen["model"])
        with cpu_custom_vjps() if fast else contextlib.nullcontext():
            loss, metrics = task.loss(model, batch, key, frozen["task"])
        return loss, (metrics, nnx.state(model, nnx.BatchStat))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, frozen, batch):
        n = jax.tree.leaves(batch)[0].shape[0]
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), n)  # one per example
        if grad_accum == 1:
            (loss, (aux, mutable)), grads = grad_fn(state.params, state.mutable, frozen, batch, keys)
        else:
            micro = jax.tree.map(lambda a: a.reshape(grad_accum, a.shape[0] // grad_accum, *a.shape[1:]),
                                 (batch, keys))

            def accumulate(carry, part):
                total, mutable = carry
                (l, (a, mutable)), g = grad_fn(state.params, mutable, frozen, *part)
                return (jax.tree.map(jnp.add, total, (l, a, g)), mutable), None

            first = jax.tree.map(lambda a: a[0], micro)
            (l, (a, _)), g = jax.eval_shape(grad_fn, state.params, state.mutable, frozen, *first)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l, a, g))
            ((loss, aux, grads), mutable), _ = jax.lax.scan(accumulate, (zero, state.mutable), micro)
            loss, aux, grads = jax.tree.map(lambda v: v / grad_accum, (loss, aux, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = ema_decay_at(state.step, ema_decay)
        ema = jax.tree.map(lambda e, p: e + (1.0 - d) * (p - e), state.ema, params)
        metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step),
                       finite=jnp.isfinite(loss))
        new_state = state.replace(params=params, opt_state=opt_state, ema=ema, step=state.step + 1, mutable=mutable)
        return new_state, metrics

    return train_step
