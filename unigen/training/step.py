"""The train step: one pure function of (state, batch) that `jax.jit` compiles once.

Per step: draw timesteps/noise/label-dropout from `fold_in(rng, step)` (so a resumed run
draws exactly what an uninterrupted one would), average the objective's loss over
`grad_accum` micro-batches with `lax.scan`, apply AdamW (with clipping), update the EMA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from unigen.diffusion import GaussianDiffusion, RectifiedFlow
from unigen.training.state import TrainState


def ema_decay_at(step, decay: float):
    """EMA decay with warmup min(decay, (1 + step) / (10 + step)): early averages are not
    dominated by the random init (a short run would otherwise sample from init weights)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def _objective_loss(process, model, x0, y, key):
    k_t, k_noise, k_drop = jax.random.split(key, 3)

    def model_fn(x_t, t, y):
        return model(x_t, t, y, label_drop_key=k_drop)

    if isinstance(process, GaussianDiffusion):
        t = process.sample_timesteps(k_t, x0.shape[0])
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        losses = process.training_losses(model_fn, x0, t, noise, y=y)
    elif isinstance(process, RectifiedFlow):
        losses = process.training_losses(model_fn, x0, k_t, y=y)
    else:
        raise TypeError(f"unknown diffusion process {type(process).__name__}")
    return losses["loss"].mean(), {k: v.mean() for k, v in losses.items() if k != "sigma"}


def make_train_step(graphdef, process, tx, schedule, *, grad_accum: int = 1, ema_decay: float = 0.9999):
    """`train_step(state, batch) -> (state, metrics)`; batch = dict(image (B,H,W,C), label (B,))."""

    def loss_fn(params, x0, y, key):
        model = nnx.merge(graphdef, params)
        return _objective_loss(process, model, x0, y, key)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        x0, y = batch["image"], batch["label"]
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(state.params, x0, y, key)
        else:
            micro = lambda a: a.reshape(grad_accum, a.shape[0] // grad_accum, *a.shape[1:])

            def accumulate(carry, inputs):
                i, xm, ym = inputs
                (l, a), g = grad_fn(state.params, xm, ym, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, (l, a, g)), None

            (l, a), g = jax.eval_shape(grad_fn, state.params, micro(x0)[0], micro(y)[0], key)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l, a, g))
            (loss, aux, grads), _ = jax.lax.scan(
                accumulate, zero, (jnp.arange(grad_accum), micro(x0), micro(y)))
            loss, aux, grads = jax.tree.map(lambda v: v / grad_accum, (loss, aux, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = ema_decay_at(state.step, ema_decay)
        ema = jax.tree.map(lambda e, p: e + (1.0 - d) * (p - e), state.ema, params)
        metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step),
                       finite=jnp.isfinite(loss))
        new_state = state.replace(params=params, opt_state=opt_state, ema=ema, step=state.step + 1)
        return new_state, metrics

    return train_step
