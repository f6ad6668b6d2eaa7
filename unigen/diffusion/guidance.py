"""Classifier-free guidance (Ho & Salimans 2022) as a model_fn -> model_fn wrapper.

The conditional and unconditional branches run in ONE network call on a doubled
batch [cond; uncond] (like DiT's `forward_with_cfg`), then
    guided = uncond + scale * (cond - uncond)
on the guided channels; every other output channel comes from the conditional
branch. This matches DiT's sample.py, which keeps the first (conditional) half of
forward_with_cfg's output.

Options
  channels   None: guide all output channels (flow velocities, SiT, diffusers' DiT
             pipeline with a non-learned variance); an int n: guide out[..., :n] only;
             "dit": n = 3, official DiT / LightningDiT-for-DiT "for exact reproducibility"
             (their FIDs used it). For a learned-sigma output [eps, v] use channels=C
             to guide eps and keep v from the conditional branch.
  interval   (t_lo, t_hi): guide only where t_lo <= t <= t_hi (inclusive, per example),
             in the units the model receives (Kynkaenniemi et al. 2024, "Applying
             Guidance in a Limited Interval"; LightningDiT's cfg_interval). Elsewhere
             the output is the conditional branch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DIT_GUIDED_CHANNELS = 3


def _null_like(null, value):
    null = null(value) if callable(null) else null
    return jnp.broadcast_to(jnp.asarray(null, jnp.asarray(value).dtype), jnp.shape(value))


def classifier_free_guidance(model_fn, scale, *, null_cond, shared=(), channels=None, interval=None):
    """Return guided_fn(x, t, **cond) with the signature of model_fn.

    null_cond: {name: null value or fn(value) -> null value} for the conditions that are
      dropped in the unconditional branch (a scalar broadcasts, e.g. {"y": num_classes}).
    shared: names of cond entries passed unchanged to the doubled call (e.g. params);
      every other entry is per-example and is duplicated along axis 0.
    """
    if channels == "dit":
        channels = DIT_GUIDED_CHANNELS
    if channels is not None and (not isinstance(channels, int) or channels < 1):
        raise ValueError(f"channels={channels!r}: use None (all), a positive int, or 'dit'")
    if interval is not None and not (len(interval) == 2 and interval[0] <= interval[1]):
        raise ValueError(f"interval={interval!r}: use (t_lo, t_hi) with t_lo <= t_hi in model-time units")

    def guided_fn(x, t, **cond):
        missing = [k for k in null_cond if k not in cond]
        if missing:
            raise ValueError(f"guided model called without cond {missing}; null_cond names {list(null_cond)}")
        both = {}
        for k, v in cond.items():
            if k in shared:
                both[k] = v
            elif k in null_cond:
                both[k] = jax.tree_util.tree_map(
                    lambda a: jnp.concatenate([a, _null_like(null_cond[k], a)]), v)
            else:
                both[k] = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), v)
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), **both)
        cond_out, uncond_out = jnp.split(out, 2, axis=0)
        n = out.shape[-1] if channels is None else channels
        if n > out.shape[-1]:
            raise ValueError(f"channels={n} exceeds the model's {out.shape[-1]} output channels")
        mixed = uncond_out[..., :n] + scale * (cond_out[..., :n] - uncond_out[..., :n])
        if interval is not None:
            inside = (t >= interval[0]) & (t <= interval[1])
            mixed = jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), mixed, cond_out[..., :n])
        return jnp.concatenate([mixed, cond_out[..., n:]], axis=-1)

    return guided_fn


def label_guidance(model_fn, scale, num_classes, *, label_key="y", channels=None, interval=None,
                   shared=()):
    """CFG for class-conditional models whose null label id is `num_classes` (DiT convention)."""
    return classifier_free_guidance(model_fn, scale, null_cond={label_key: num_classes}, shared=shared,
                                    channels=channels, interval=interval)
