"""LZN latent alignment: a latent must reverse-flow into the zone of its matching anchor.

p_j(t) is the posterior weight of row j's target anchor along the reverse path of its latent
(`unigen.lzn.flow.reverse`). The loss keeps, per row, the best p_j(t) over the steps after
an early cutoff, then averages (the paper's "soft assignment" with "early step cutoff"):

    cut_steps = int(cut * S)                 (S recorded steps, first entry at t = t_max)
    best_j    = max_{s >= cut_steps} p_j(t_s) (the first steps, nearest the Gaussian where the
                                              posterior is still close to the prior, are dropped)
    kind="prob": loss_j = -best_j             (GenerationTrainer's label loss)
    kind="log":  loss_j = -log best_j         (ContrastiveTrainer's "cross_entropy" term)

This matches the reference's `GenerationTrainer._train_iteration` (label_loss_cut_off_step
= 0.2, label flow: Euler, 100 steps, log prior = log of the batch's class frequencies, targets
= labels) and `ContrastiveTrainer._train_iteration` (assignment_loss_cut_off_step = 0.2,
Euler, 20 steps, loss weights prob 0 / cross_entropy 1, prior_data_scale 0.45).

`contrastive_alignment_loss` is the representation-learning case: view A is encoded through
view A's anchors, its latents are reversed through view B's anchors, and the target of row j
is anchor j (the same image). The reference does only this one direction (encode
`data[:, 0]`, assign into `data[:, 1]`); symmetric=True also adds B -> A and averages.
Under a batch-sharded jit the index j is the global row, as the reference's rank shift gives.

The max is taken over log-probabilities when available (log max p = max log p), so "log"
stays finite where p underflows; the reference takes log of the max weight and skips an
iteration whose loss is not finite.
"""
from __future__ import annotations

import jax.numpy as jnp

from unigen.lzn import flow

KINDS = ("prob", "log")


def alignment_loss(posteriors, targets=None, cut=0.2, *, kind="prob", log=False):
    """(loss scalar, per-example (N,)).

    posteriors: (S, N, M) weights along the reverse path with targets (N,) ints, or (S, N)
    the targets' weights already picked (targets None, e.g. `reverse(..., targets=...)`).
    log: the inputs are log-weights (`reverse(..., log=True)`).
    cut: fraction of the S steps dropped from the start (t = t_max end); int(cut * S) steps.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KINDS}")
    p = posteriors
    if targets is not None:
        p = jnp.take_along_axis(p, targets[None, :, None], axis=2)[..., 0]
    steps = p.shape[0]
    start = int(cut * steps)
    if not 0 <= start < steps:
        raise ValueError(f"cut={cut} leaves no step of {steps}")
    best = jnp.max(p[start:], axis=0)  # (N,)
    if kind == "prob":
        per = -(jnp.exp(best) if log else best)
    else:
        per = -(best if log else jnp.log(best))
    return jnp.mean(per), per


def contrastive_alignment_loss(anchors_a, anchors_b, *, noise=None, steps=20, solver="euler", cut=0.2,
                               kind="log", symmetric=False, **flow_kwargs):
    """(loss scalar, per-example (N,) or (2N,) when symmetric) for two views' anchors (N, D).

    noise: (N, D) start noise for encoding, already scaled (reference: N(0, I) * 0.45).
    flow_kwargs go to both `flow.encode` and `flow.reverse` (t_min, t_max, spacing, ...)."""

    def one_way(src, dst):
        z = flow.encode(src, src, noise=noise, steps=steps, solver=solver, **flow_kwargs)
        targets = jnp.arange(src.shape[0])
        _, logp = flow.reverse(z, dst, steps=steps, solver=solver, targets=targets, log=True, **flow_kwargs)
        return alignment_loss(logp, cut=cut, kind=kind, log=True)[1]

    per = one_way(anchors_a, anchors_b)
    if symmetric:
        per = jnp.concatenate([per, one_way(anchors_b, anchors_a)])
    return jnp.mean(per), per
