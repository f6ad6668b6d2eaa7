"""The latent flow of Latent Zoning Networks (Lin et al. 2025, "Latent Zoning Network"),
as pure, jittable functions of arrays.

Time convention (LZN's own; see ../shared/REFERENCES.md "Time conventions"): t = 0 is the
discrete anchor set {a_i} (the encoder outputs of the global minibatch), t = 1 is N(0, I),
on the straight path x_t = (1 - t) a + t eps. No network is involved, so nothing converts t.

Closed form (reference: `EulerLatentFlow._velocity` / `DPMSolverLatentFlow._velocity` in
microsoft/latent-zoning-networks `lzn/latent_flow/`):

    eps_i(x, t) = (x - (1 - t) a_i) / t
    w_i(x, t)   = softmax_i(-|eps_i|^2 / 2 + log prior_i)       (`posterior`)
                = softmax_i(-|x - (1 - t) a_i|^2 / (2 t^2) + log prior_i),
                  i.e. the Gaussian likelihood of x_t given a_i; the reference multiplies
                  the unnormalised pdf by optional weights (class frequencies for label
                  anchors), which is log prior here.
    v(x, t)     = sum_i w_i (eps_i - a_i) = (x - D) / t,   D = sum_i w_i a_i  (`velocity`)

D is the x0 (data) prediction, so with alpha = 1 - t and sigma = t every solver step is
x_next = D + r (x - D) + c (D - D_prev) with r = t_next / t: Euler is the c = 0 case (on
this path it coincides with DPM-Solver++ first order / DDIM), DPM-Solver++(2M) adds the
multistep correction c. Steps evaluate the flow only at t > 0, and a step to t = 0 lands
exactly on D.

Time grids (`time_grid`) and the reference's defaults (`t_range`):
  euler    encode t: 1e-4 -> 1, reverse t: 1 -> 0 (EulerLatentFlow, eps=1e-4; uniform steps)
  dpm++2m  encode t: 1e-3 -> 0.999, reverse t: 0.999 -> 1e-3 (DPMSolverLatentFlow,
           eps_start = eps_end = 1e-3, skip_type "time_uniform").
The reference's DPM-Solver defaults to order 3; only 2M is offered here. Its
`lower_order_final` rule (last step first order when steps < 10) is kept. Other spacings
of the reference's `get_time_steps`: "logsnr", "quadratic".

Encode starts each point at (1 - t_min) p + t_min noise (the reference's `_forward`:
`eps * prior_data + (1 - eps) * encoded`, prior_data = N(0, I) * prior_data_scale; pass that
scaled noise, or None for zero). The posteriors recorded along a path are those of each
evaluation, at grid[:-1] (the reference's `pdfs` list / `intermediates_pdf`).

Squared distances use the expansion |x - c a|^2 = |x|^2 - 2c x.a + c^2 |a|^2 (a matmul;
the reference's direct differences need an (N, M, D) array per step), after centring on the
anchor mean, with |x|^2 dropped (a row constant: softmax ignores it), the matmul at HIGHEST
precision (GPU f32 matmuls otherwise default to TF32, ~1e-3 relative), and the logits taken
relative to each row's nearest anchor, whose logit is then exactly 0. Without that pivot
the logits are ~|a|^2 / t^2 (1e8 at t = 1e-4), their float32 rounding differs between
fusions, and the backward of a one-hot posterior becomes rounding noise times 1/t^2 (seen
as gradients off by 1e5 under sharding). What remains is float32 rounding of ~1e-7 |a|^2 / t^2
in logit differences, which matters only for two anchors closer than ~3e-4 |a|; float64 is
accurate throughout. Independently of this, an Euler encode from t_min = 1e-4 in float32
holds the start noise t_min * noise to only ~1e-3 relative (as the float32 reference does),
so float32 gradients through it are good to ~1e-3; t_min = 1e-3 (DPM default) gives ~5e-5.

Gradients flow through every step (w.r.t. the anchors, the start points, the noise and the
prior). Each step is `jax.checkpoint`ed inside `lax.scan`, so backward keeps only the (N, D)
carries, not the (N, M) posteriors of every step; pass `targets` to `reverse` to keep only
each row's target posterior, (steps, N), instead of (steps, N, M).

Arrays are traced; steps, solver, t_min, t_max, spacing, lower_order_final, targets-or-not
and log are Python values fixed at trace time (static under jit: the grid and the solver
coefficients are float64 NumPy constants, cast to the arrays' dtype).

Sharding: under jit with points sharded over the batch (a 1-D mesh), `anchors` is simply
the full (global) array; XLA gathers it. There is no hand-written collective.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The per-step DPM-Solver++(2M) coefficient formula is shared with the diffusion sampler;
# its loop is not (it draws its own start noise, runs only toward sigma = 0, takes a model_fn
# and returns only the end point, while here each step needs the posteriors, gradients
# w.r.t. the anchors and rematerialisation).
from unigen.diffusion.samplers import dpm2m_coefficients

SOLVERS = ("euler", "dpm++2m")
SPACINGS = ("uniform", "logsnr", "quadratic")
_RANGES = {  # solver -> direction -> (t_min, t_max), as the reference classes default
    "euler": {"encode": (1e-4, 1.0), "reverse": (0.0, 1.0)},
    "dpm++2m": {"encode": (1e-3, 1.0 - 1e-3), "reverse": (1e-3, 1.0 - 1e-3)},
}
_HIGHEST = jax.lax.Precision.HIGHEST


# ---- closed-form posterior and velocity ------------------------------------------------------
def _col(t, x):
    """t as a column that broadcasts against (N, M): a scalar or one value per row."""
    t = jnp.asarray(t, x.dtype)
    return t.reshape(-1, 1) if t.ndim else t


def log_posterior(x, t, anchors, log_prior=None):
    """(N, M) log w_i(x, t): log-softmax over anchors of -|x - (1-t) a_i|^2 / (2 t^2) + log prior_i.
    x (N, D); t > 0, a scalar or (N,); anchors (M, D); log_prior (M,) or None (uniform;
    -inf entries exclude an anchor)."""
    t = _col(t, x)
    c = 1.0 - t
    # Centring on the anchor mean is exact (x - c a = (x - c mu) - c (a - mu)) and shrinks the
    # magnitudes the expansion cancels; the value does not depend on mu, so no gradient either.
    mu = jax.lax.stop_gradient(jnp.mean(anchors, axis=0))
    xc, ac = x - c * mu, anchors - mu
    cross = jnp.matmul(xc, ac.T, precision=_HIGHEST)  # (N, M)
    sq = jnp.sum(ac * ac, axis=-1)  # (M,)
    # logit_i = c (cross_i - c sq_i / 2) / t^2 up to the row constant -|xc|^2 / (2 t^2). Taken
    # relative to the row's nearest anchor k: its logit is then exactly 0 (differences of equal
    # entries), not a rounded ~1/t^2-sized number, so near t = 0 the posterior is exactly
    # one-hot and its backward exactly zero instead of rounding noise times 1/t^2.
    k = jnp.argmax(cross - 0.5 * c * sq, axis=1)[:, None]
    d_cross = cross - jnp.take_along_axis(cross, k, axis=1)
    d_sq = sq - sq[k]
    logits = c * (d_cross - 0.5 * c * d_sq) / (t * t)
    if log_prior is not None:
        logits = logits + jnp.asarray(log_prior, logits.dtype)
    return jax.nn.log_softmax(logits, axis=-1)


def posterior(x, t, anchors, log_prior=None):
    """(N, M) posterior weights w_i(x, t) of each anchor (rows sum to 1); see `log_posterior`."""
    return jnp.exp(log_posterior(x, t, anchors, log_prior))


def denoise(x, t, anchors, log_prior=None):
    """(D, w): the x0 prediction D = sum_i w_i a_i (N, D) and the weights w (N, M)."""
    w = posterior(x, t, anchors, log_prior)
    return jnp.matmul(w, anchors, precision=_HIGHEST), w


def velocity(x, t, anchors, log_prior=None):
    """(v, w): dx/dt = sum_i w_i (eps_i - a_i) = (x - D) / t, shape (N, D), and the (N, M)
    posterior w. The direction of increasing t (toward the Gaussian)."""
    d, w = denoise(x, t, anchors, log_prior)
    return (x - d) / _col(t, x), w


# ---- time grid ---------------------------------------------------------------------------------
def t_range(solver="euler", direction="encode"):
    """(t_min, t_max) the reference uses for `solver` ("euler" | "dpm++2m") and `direction`
    ("encode" | "reverse")."""
    _check_solver(solver)
    return _RANGES[solver][direction]


def time_grid(steps, t_min, t_max=1.0, *, spacing="uniform", decreasing=False):
    """(steps + 1,) float64 times from t_min up to t_max (encode), or from t_max down to t_min
    with decreasing=True (reverse). spacing: "uniform" in t (both reference flows), "logsnr"
    uniform in lambda = log((1 - t) / t) (needs 0 < t < 1 at both ends), or "quadratic"
    uniform in sqrt(t) (DPM-Solver's "time_quadratic")."""
    steps, t_min, t_max = int(steps), float(t_min), float(t_max)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if spacing == "uniform":
        ts = np.linspace(t_min, t_max, steps + 1)
    elif spacing == "quadratic":
        ts = np.linspace(np.sqrt(t_min), np.sqrt(t_max), steps + 1) ** 2
    elif spacing == "logsnr":
        if not 0.0 < t_min and t_max < 1.0:
            raise ValueError("spacing='logsnr' needs 0 < t_min and t_max < 1 (lambda is infinite at 0 and 1)")
        lam = np.linspace(np.log1p(-t_min) - np.log(t_min), np.log1p(-t_max) - np.log(t_max), steps + 1)
        ts = 1.0 / (1.0 + np.exp(lam))
    else:
        raise ValueError(f"spacing={spacing!r} must be one of {SPACINGS}")
    ts[0], ts[-1] = t_min, t_max  # exact ends whatever the spacing's rounding
    return ts[::-1].copy() if decreasing else ts


# ---- integrator --------------------------------------------------------------------------------
def _check_solver(solver):
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} must be one of {SOLVERS}")


def _coefficients(ts, solver, lower_order_final):
    """Per step (r, c) for x_next = D + r (x - D) + c (D - D_prev), float64 numpy."""
    if np.any(ts[:-1] <= 0):
        raise ValueError("the flow is evaluated at every grid time but the last; these must be > 0 "
                         f"(got {ts[:-1].min()}): encode needs t_min > 0")
    r = ts[1:] / ts[:-1]
    if solver == "euler":
        return r, np.zeros_like(r)
    # alpha = 1 - t, sigma = t; a + b = 1 on this path, so a x + b D = D + a (x - D) with a = r.
    a, _, c = dpm2m_coefficients(1.0 - ts, ts)
    if lower_order_final and len(r) < 10:  # the reference's rule: last step first order
        c = c.copy()
        c[-1] = 0.0
    return a, c


def integrate(x, anchors, ts, *, log_prior=None, solver="euler", lower_order_final=True,
              record=None, targets=None):
    """Integrate the latent flow from x at ts[0] through the grid `ts` (either direction).

    record: None (no per-step output), "posterior" ((S, N, M) weights) or "log_posterior".
    targets: (N,) anchor indices; then only each row's target entry is recorded, (S, N).
    Returns (x_end, recorded or None), S = len(ts) - 1 evaluations at ts[:-1].
    """
    _check_solver(solver)
    ts = np.asarray(ts, np.float64)
    r, c = _coefficients(ts, solver, lower_order_final)
    dt = x.dtype
    xs = (jnp.asarray(ts[:-1], dt), jnp.asarray(r, dt), jnp.asarray(c, dt))

    def step(carry, inp):
        x, d_prev = carry
        t, ri, ci = inp
        logw = log_posterior(x, t, anchors, log_prior)
        w = jnp.exp(logw)
        d = jnp.matmul(w, anchors, precision=_HIGHEST)
        x_next = d + ri * (x - d) + ci * (d - d_prev)
        out = None
        if record is not None:
            out = logw if record == "log_posterior" else w
            if targets is not None:
                out = jnp.take_along_axis(out, targets[:, None], axis=1)[:, 0]
        return (x_next, d), out

    # Rematerialise each step in backward: memory O(steps * N * D), not O(steps * N * M).
    step = jax.checkpoint(step, prevent_cse=False)
    (x, _), out = jax.lax.scan(step, (x, jnp.zeros_like(x)), xs)
    return x, out


def _grid(solver, direction, steps, t_min, t_max, spacing):
    lo, hi = t_range(solver, direction)
    lo = lo if t_min is None else t_min
    hi = hi if t_max is None else t_max
    return time_grid(steps, lo, hi, spacing=spacing, decreasing=direction == "reverse")


def encode(points, anchors, *, noise=None, log_prior=None, steps=20, solver="euler", t_min=None,
           t_max=None, spacing="uniform", lower_order_final=True, return_posteriors=False):
    """Latents z (N, D): each point starts at (1 - t_min) p + t_min noise and is carried by
    the flow of `anchors` (M, D) up to t_max. points (N, D) are usually the anchors
    themselves (or their shard); noise (N, D) is the reference's scaled prior_data, None = 0.
    t_min / t_max default to the reference's for `solver` (see `t_range`).
    return_posteriors: also return the (steps, N, M) posteriors, as (z, posteriors)."""
    ts = _grid(solver, "encode", steps, t_min, t_max, spacing)
    t0 = jnp.asarray(ts[0], points.dtype)
    x = (1.0 - t0) * points + (0.0 if noise is None else t0 * noise)
    z, post = integrate(x, anchors, ts, log_prior=log_prior, solver=solver, lower_order_final=lower_order_final,
                        record="posterior" if return_posteriors else None)
    return (z, post) if return_posteriors else z


def reverse(z, anchors, *, log_prior=None, steps=20, solver="euler", t_min=None, t_max=None,
            spacing="uniform", lower_order_final=True, targets=None, log=False):
    """Carry latents z (N, D) from t_max back to t_min through `anchors` (M, D).

    Returns (x_end (N, D), posteriors): the posterior of every step, (steps, N, M), first
    entry at t_max; with `targets` (N,) ints only each row's target entry, (steps, N);
    log=True gives log-posteriors (exact where the weights underflow). With the Euler
    default (t: 1 -> 0) x_end is the posterior mean at the last evaluated t, i.e. an anchor
    once that posterior is one-hot."""
    ts = _grid(solver, "reverse", steps, t_min, t_max, spacing)
    return integrate(z, anchors, ts, log_prior=log_prior, solver=solver, lower_order_final=lower_order_final,
                     record="log_posterior" if log else "posterior", targets=targets)
