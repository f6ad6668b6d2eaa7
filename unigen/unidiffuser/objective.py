"""UniDiffuser's multi-timestep objective (Bao et al. 2023, eq. 5).

Every modality gets its own timestep, drawn independently and uniformly, and its own noise; one
network predicts all the noises at once:

    L = E || eps_theta(x_{t_x}, y_{t_y}, t_x, t_y) - [eps_x, eps_y] ||^2,   t_x, t_y ~ U{0..T-1}

so the same network is a joint model (t_x = t_y), a conditional one (one modality clean, t = 0)
and a marginal one (the other modality pure noise, t = T). A modality may have several parts
that share its timestep (UniDiffuser's image = its VAE latent and its CLIP image embedding).

Time convention: diffusers' (REFERENCES.md "UniDiffuser"): the discrete Gaussian diffusion of
`unigen.diffusion.gaussian` (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at integer t in 0..T-1),
the network receives t itself; at sampling time a clean condition is given t = 0 and a modality
replaced by noise t = T (`num_timesteps`, diffusers' `max_timestep`).

The same objective over a rectified flow (`unigen.diffusion.flow`, not in the paper): each
modality draws its own noise level sigma from the flow's time sampling (e.g. logit-normal),
x_sigma = (1 - sigma) x_0 + sigma eps, and the network predicts every modality's velocity
eps - x_0 at model times time_scale * sigma (a clean condition: 0, pure noise: time_scale, the
same convention as above with time_scale = 1000). The modes and samplers need nothing else.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from unigen.diffusion.flow import RectifiedFlow
from unigen.diffusion.gaussian import GaussianDiffusion
from unigen.diffusion.objective import per_example, split_keys

WEIGHTINGS = ("joint", "per_modality")

# network(noisy, t) -> eps (or velocity, over a flow): noisy maps modality -> tuple of parts (each
# (B, ...)), t maps modality -> (B,) model times; the result has noisy's structure.
MultiModalNetwork = Callable[[dict, dict], dict]


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: use 'joint' (the paper's squared norm of the concatenated "
                         f"noises, every element weighted alike) or 'per_modality' (each modality's mean "
                         f"squared error, averaged over modalities)")
    return weighting


TIME_WEIGHTINGS = ("uniform", "v")


def time_weight(diffusion: GaussianDiffusion, t, time_weighting: str = "uniform", min_snr_gamma: float | None = None):
    """Per-example weight of the noise-prediction error at timesteps t, SNR_t = abar_t / (1 - abar_t):
      "uniform"  1, the paper's eq. 5;
      "v"        1 / abar_t = 1 + 1 / SNR_t: the squared error of the v-prediction
                 v = sqrt(abar) eps - sqrt(1 - abar) x0 implied by the noise prediction (Salimans & Ho
                 2022), i.e. the x0 error weighted by 1 / (1 - abar). A noise-prediction error is
                 SNR_t times the x0 error, so under "uniform" the noisy steps, where the global layout
                 and the other modality's information matter, hardly weigh.
    min_snr_gamma multiplies by Min-SNR-gamma's min(SNR_t, gamma) / SNR_t (Hang et al. 2023), which
    caps the weight of the nearly clean steps."""
    if time_weighting not in TIME_WEIGHTINGS:
        raise ValueError(f"time_weighting={time_weighting!r}: use one of {TIME_WEIGHTINGS}")
    abar = jnp.asarray(diffusion.alphas_cumprod, jnp.float32)[t]
    w = jnp.ones(t.shape, jnp.float32) if time_weighting == "uniform" else 1.0 / abar
    if min_snr_gamma is not None:
        snr = abar / (1.0 - abar)
        w = w * jnp.minimum(snr, min_snr_gamma) / snr
    return w


def check_endpoint_prob(prob) -> float:
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 0.5:
        raise ValueError(f"endpoint_prob={prob!r}: a probability in [0, 0.5] (each of clean and pure noise; "
                         f"0 = the paper's draws only)")
    return float(prob)


def check_objective(diffusion, time_weighting: str = "uniform", min_snr_gamma: float | None = None) -> None:
    """ValueError naming the option this process cannot take in the multi-timestep objective."""
    if isinstance(diffusion, RectifiedFlow):
        if time_weighting != "uniform" or min_snr_gamma is not None:
            raise ValueError(f"time_weighting={time_weighting!r}, min_snr_gamma={min_snr_gamma!r}: noise-prediction "
                             f"weightings; over a rectified flow its time sampling (time_sampling) weighs the noise "
                             f"levels: use 'uniform' and None")
        if diffusion.direction_weight:
            raise ValueError(f"direction_weight={diffusion.direction_weight}: the multi-timestep objective has no "
                             f"velocity-direction term; set 0")
    elif diffusion.learned_variance():
        raise ValueError("the multi-timestep objective predicts noise only: build the GaussianDiffusion with "
                         "learn_sigma=False")


def condition_times(process) -> tuple[float, float]:
    """The model times of a clean condition and of a modality replaced by pure noise: (0, T) for the
    Gaussian diffusion (diffusers' max_timestep = num_timesteps), (model_time(0), model_time(1))
    for a rectified flow."""
    if isinstance(process, RectifiedFlow):
        return float(process.model_time(0.0)), float(process.model_time(1.0))
    return 0.0, float(process.num_timesteps)


def _noised(process, x0_parts, key, n, endpoint_prob: float = 0.0):
    """(training times (B,): integer t or sigma, model times (B,), noisy parts, targets, loss weights
    (B,)) of one modality."""
    k_t, k_noise = split_keys(key)
    k_end = None
    if endpoint_prob:  # a key of its own, so that endpoint_prob=0 draws exactly what it always did
        k_t, k_end = split_keys(k_t)
    parts = tuple(x0_parts)
    part_keys = split_keys(k_noise, len(parts)) if len(parts) > 1 else (k_noise,)
    noise = tuple(per_example(k, n, lambda kk, p=p: jax.random.normal(kk, p.shape[1:], jnp.float32))
                  for k, p in zip(part_keys, parts))
    if isinstance(process, RectifiedFlow):
        sigma = per_example(k_t, n, lambda k: process.sample_sigma(k, 1)[0])
        noisy = tuple(process.interpolate(p, sigma.astype(p.dtype), e.astype(p.dtype)) for p, e in zip(parts, noise))
        targets = tuple(process.velocity_target(p.astype(jnp.float32), e) for p, e in zip(parts, noise))
        t, model_t = sigma, process.model_time(sigma)
    else:
        t = per_example(k_t, n, lambda k: jax.random.randint(k, (), 0, process.num_timesteps))
        noisy = tuple(process.q_sample(p, t, e.astype(p.dtype)) for p, e in zip(parts, noise))
        targets, model_t = noise, process.model_timesteps(t)
    if endpoint_prob:
        return _at_endpoints(process, parts, noise, (t, model_t, noisy, targets), k_end, n, endpoint_prob)
    return t, model_t, noisy, targets, jnp.ones((n,), jnp.float32)


def _at_endpoints(process, parts, noise, drawn, key, n, prob):
    """Moves each example, with probability `prob` each, to the two ends the modes evaluate the
    network at: the modality clean at the clean-condition time (a condition: its loss weight is 0,
    there is no noise in it to predict) or replaced by pure noise at the pure-noise time (the
    marginal modes and the guidance's unconditional branch; its target is kept: the velocity
    eps - x0 or the noise eps). Over a logit-normal flow these ends are otherwise almost never
    drawn (sigma > 0.95 with probability 0.002)."""
    t, model_t, noisy, targets = drawn
    u = per_example(key, n, lambda k: jax.random.uniform(k, ()))
    clean, pure = u < prob, u >= 1.0 - prob
    t_clean, t_noise = condition_times(process)
    model_t = jnp.where(clean, t_clean, jnp.where(pure, t_noise, model_t)).astype(model_t.dtype)
    if isinstance(process, RectifiedFlow):
        t = jnp.where(clean, 0.0, jnp.where(pure, 1.0, t)).astype(t.dtype)
    else:  # the last training step stands for pure noise in the time weighting
        t = jnp.where(clean, 0, jnp.where(pure, process.num_timesteps - 1, t)).astype(t.dtype)

    def pick(c, z, e):
        shape = (n,) + (1,) * (z.ndim - 1)
        return jnp.where(clean.reshape(shape), c.astype(z.dtype), jnp.where(pure.reshape(shape), e.astype(z.dtype), z))
    noisy = tuple(pick(p, z, e) for p, z, e in zip(parts, noisy, noise))
    return t, model_t, noisy, targets, jnp.where(clean, 0.0, 1.0).astype(jnp.float32)


def multi_timestep_losses(diffusion: GaussianDiffusion | RectifiedFlow, network: MultiModalNetwork, x0: dict, rng, *,
                          weighting: str = "joint", time_weighting: str = "uniform",
                          min_snr_gamma: float | None = None, endpoint_prob: float = 0.0) -> dict:
    """Per-example losses (B,) of eq. 5: dict(loss, mse_<modality> for each modality).

    x0 maps modality name -> tuple of clean parts (B, ...); `rng` is one key or one key per
    example (per-example draws, so micro-batches draw what the whole batch would). weighting
    "joint" is the paper's: the squared norm over the concatenation of all parts divided by its
    size; "per_modality" averages each modality's mean squared error, so a small modality
    (UniDiffuser's 77 x 64 text against a 4 x 64 x 64 latent) weighs as much as a large one.
    Over a RectifiedFlow the targets are the velocities (time weighting "uniform" only).

    endpoint_prob > 0 (not in the paper) also trains at exactly the times the sampling modes use
    for a condition: per example and modality, with this probability the modality is clean and
    with the same probability it is pure noise (`_at_endpoints`); a clean modality's loss and
    mse_<modality> count 0."""
    check_weighting(weighting)
    endpoint_prob = check_endpoint_prob(endpoint_prob)
    check_objective(diffusion, time_weighting, min_snr_gamma)
    flow = isinstance(diffusion, RectifiedFlow)
    names = sorted(x0)
    n = next(iter(x0[names[0]])).shape[0]
    keys = dict(zip(names, split_keys(rng, len(names))))
    noisy, t, model_t, target, mask = {}, {}, {}, {}, {}
    for name in names:
        t[name], model_t[name], noisy[name], target[name], mask[name] = _noised(diffusion, x0[name], keys[name], n,
                                                                                endpoint_prob)
    out = network(noisy, model_t)
    sq, size, metrics = {}, {}, {}
    for name in names:
        if len(out[name]) != len(target[name]):
            raise ValueError(f"the network returned {len(out[name])} parts for modality {name!r}; it has "
                             f"{len(target[name])}")
        sums = []
        for pred, e in zip(out[name], target[name]):
            if pred.shape != e.shape:
                raise ValueError(f"modality {name!r}: the network predicted shape {pred.shape} for a part of "
                                 f"shape {e.shape}")
            pred = diffusion.velocity(pred) if flow else pred
            sums.append(jnp.sum(jnp.square(pred.astype(jnp.float32) - e).reshape(n, -1), axis=1))
        w = mask[name] if flow else mask[name] * time_weight(diffusion, t[name], time_weighting, min_snr_gamma)
        sq[name] = sum(sums) * w
        size[name] = sum(e[0].size for e in target[name])
        metrics[f"mse_{name}"] = sum(sums) * mask[name] / size[name]
    if weighting == "joint":
        loss = sum(sq.values()) / sum(size.values())
    else:
        loss = sum(sq[name] / size[name] for name in names) / len(names)
    return dict(loss=loss, **metrics)
