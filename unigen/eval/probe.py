"""Linear probe: how linearly a frozen representation separates the classes.

Protocol (`linear_probe`), fixed so that numbers from different families compare:

1. Features are standardised per dimension with the mean and standard deviation of the
   rows the classifier is fitted on (the train set; during selection, the fit part of it).
   A dimension that is constant on those rows (std < 1e-6) is centred only. The test set
   never contributes to any statistic.
2. The classifier is multinomial logistic regression, logits = x W + b, fitted full-batch
   by L-BFGS (optax.lbfgs, zoom line search) from W = 0, b = 0 on

       mean_i cross_entropy(logits_i, y_i) + l2 / 2 * |W|^2      (b is not penalised)

   for at most `steps` iterations, stopping early once the gradient's L2 norm is below
   1e-5. The problem is strictly convex for l2 > 0 and the start is fixed, so the fit is
   deterministic (float32, one compile per feature shape).
3. The penalty l2 is chosen on the TRAIN set only: a stratified hold-out of `holdout`
   (20%) of each class's train rows, drawn with numpy's default_rng(seed), is scored by a
   fit on the other 80% for every l2 in the grid (default 1e-4 .. 1e-1, half-decade steps).
   The winner has the best hold-out accuracy; ties go to the lower hold-out cross-entropy.
   The test labels are never read before the final evaluation.
4. The classifier is refitted on the whole train set with the chosen l2 and scored on the
   train and test sets.

`raw_pixel_baseline` is the same probe on the 64 raw pixels of the embedded digits
(`unigen.data.digits_arrays`, uint8 mapped to [-1, 1]): the yardstick a learned
representation should beat (about 0.95 test accuracy with the default grid).

The reference's probe (microsoft/latent-zoning-networks `lzn/metric/linear_probing.py`)
trains a Linear head with AdamW in minibatches for a fixed number of epochs and reports the
test accuracy of every epoch; for an 1433-image set a converged, full-batch fit with a
penalty chosen on held-out train data is cheaper and has no epoch to pick.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
HOLDOUT = 0.2
STEPS = 500
GRAD_TOL = 1e-5
STD_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: standardisation (mean, std) and the linear map (weight (D, K), bias (K,))."""
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    iterations: int

    def logits(self, features) -> np.ndarray:
        x = (np.asarray(features, np.float32) - self.mean) / self.std
        return x @ self.weight + self.bias

    def predict(self, features) -> np.ndarray:
        return np.argmax(self.logits(features), axis=-1)


def _cross_entropy(logits, labels):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(x, y, w, l2, *, num_classes, steps):
    """L-BFGS fit on the rows with weight w = 1 (w = 0 rows are ignored, so every fit of a
    data set shares one shape and one compile). Returns (mean, std, W, b, iterations)."""
    n = jnp.sum(w)
    mean = jnp.sum(w[:, None] * x, axis=0) / n
    var = jnp.sum(w[:, None] * jnp.square(x - mean), axis=0) / n
    std = jnp.sqrt(var)
    std = jnp.where(std < STD_FLOOR, 1.0, std)
    z = (x - mean) / std

    def loss(params):
        logits = jnp.dot(z, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]
        return jnp.sum(w * _cross_entropy(logits, y)) / n + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))

    params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype), "b": jnp.zeros((num_classes,), x.dtype)}
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, i + 1

    def keep_going(carry):
        _, state, i = carry
        grad = otu.tree_get(state, "grad")
        return (i < steps) & ((i == 0) | (otu.tree_norm(grad) >= GRAD_TOL))

    params, _, iters = jax.lax.while_loop(keep_going, step, (params, opt.init(params), jnp.zeros((), jnp.int32)))
    return mean, std, params["w"], params["b"], iters


def _as_inputs(features, labels, what):
    x = np.asarray(features, np.float32)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"{what}_features must be (N, D); got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{what}_labels must be ({x.shape[0]},) to match {what}_features; got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError(f"{what}_labels must be non-negative integers; got dtype {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}_features contain NaN or inf")
    return x, y.astype(np.int32)


def fit_linear_probe(features, labels, *, l2: float, steps: int = STEPS, num_classes: int | None = None,
                     weights=None) -> LinearProbe:
    """Fit the probe (standardisation + logistic regression, protocol steps 1-2) on all rows,
    or on the rows where `weights` is 1."""
    x, y = _as_inputs(features, labels, "train")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    w = np.ones(len(y), np.float32) if weights is None else np.asarray(weights, np.float32)
    mean, std, weight, bias, iters = _fit(x, y, w, np.float32(l2), num_classes=k, steps=int(steps))
    return LinearProbe(*(np.asarray(a) for a in (mean, std, weight, bias)), iterations=int(iters))


def _score(probe: LinearProbe, x, y) -> tuple[float, float]:
    """(accuracy, mean cross-entropy); labels outside the probe's classes count as wrong."""
    logits = probe.logits(x).astype(np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    inside = y < logp.shape[1]
    nll = np.where(inside, -logp[np.arange(len(y)), np.minimum(y, logp.shape[1] - 1)], np.inf)
    return float(np.mean(np.argmax(logits, axis=1) == y)), float(np.mean(nll))


def holdout_split(labels, fraction: float = HOLDOUT, seed: int = 0) -> np.ndarray:
    """Boolean (N,) mask of the hold-out rows: round(fraction * n_c) random rows of each
    class c (at least one when the class has two or more rows), numpy default_rng(seed)."""
    y = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout={fraction!r}: must be in (0, 1)")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        take = min(max(int(round(fraction * len(rows))), 1 if len(rows) > 1 else 0), len(rows) - 1)
        mask[rng.permutation(rows)[:take]] = True
    return mask


def select_l2(features, labels, *, grid=L2_GRID, holdout: float = HOLDOUT, steps: int = STEPS, seed: int = 0,
              num_classes: int | None = None) -> tuple[float, list[dict]]:
    """Protocol step 3: (chosen l2, per-candidate [{l2, holdout_acc, holdout_loss}]), using
    the train rows only."""
    x, y = _as_inputs(features, labels, "train")
    if not grid or any(not float(v) > 0 for v in grid):
        raise ValueError(f"l2 grid {grid!r}: give one or more positive penalties")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    held = holdout_split(y, holdout, seed)
    scores = []
    for l2 in grid:
        probe = fit_linear_probe(x, y, l2=float(l2), steps=steps, num_classes=k, weights=~held)
        acc, nll = _score(probe, x[held], y[held])
        scores.append({"l2": float(l2), "holdout_acc": acc, "holdout_loss": nll})
    best = min(scores, key=lambda s: (-s["holdout_acc"], s["holdout_loss"]))
    return best["l2"], scores


def linear_probe(train_features, train_labels, test_features, test_labels, *, l2: float | None = None,
                 l2_grid=L2_GRID, holdout: float = HOLDOUT, steps: int = STEPS, seed: int = 0,
                 num_classes: int | None = None) -> dict:
    """The probe protocol of the module docstring. l2=None selects the penalty from `l2_grid`
    on a hold-out split of the train set; a number fixes it (no selection).

    Returns {train_acc, test_acc, train_loss, test_loss, l2, selection (per-candidate scores,
    empty when l2 was given), iterations, num_classes, num_features, n_train, n_test}."""
    x, y = _as_inputs(train_features, train_labels, "train")
    xt, yt = _as_inputs(test_features, test_labels, "test")
    if xt.shape[1] != x.shape[1]:
        raise ValueError(f"test_features have {xt.shape[1]} dimensions, train_features {x.shape[1]}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    selection = []
    if l2 is None:
        l2, selection = select_l2(x, y, grid=l2_grid, holdout=holdout, steps=steps, seed=seed, num_classes=k)
    elif not float(l2) > 0:
        raise ValueError(f"l2={l2!r}: must be > 0 (or None to select it)")
    probe = fit_linear_probe(x, y, l2=float(l2), steps=steps, num_classes=k)
    train_acc, train_loss = _score(probe, x, y)
    test_acc, test_loss = _score(probe, xt, yt)
    return {
        "train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss, "test_loss": test_loss,
        "l2": float(l2), "selection": selection, "iterations": probe.iterations, "num_classes": k,
        "num_features": int(x.shape[1]), "n_train": int(len(y)), "n_test": int(len(yt)),
    }


def digits_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 64) float32 in [-1, 1], labels (N,)) of the embedded digits split."""
    from unigen.data.digits import digits_arrays

    d = digits_arrays(split)
    x = d["image"].reshape(len(d["image"]), -1).astype(np.float32) / 127.5 - 1.0
    return x, d["label"]


def raw_pixel_baseline(**probe_options) -> dict:
    """`linear_probe` on the flattened raw pixels of the digits train / test splits."""
    return linear_probe(*digits_pixels("train"), *digits_pixels("test"), **probe_options)
