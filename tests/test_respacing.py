"""Timestep respacing must reproduce improved-diffusion / DiT `space_timesteps` and the
respaced betas, and the network must keep receiving the original timestep indices."""
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.diffusion import GaussianDiffusion, space_timesteps


def _iddpm_kept(T, spec):
    """Independent re-derivation of IDDPM's rule (see respace.py in openai/improved-diffusion)."""
    if spec.startswith("ddim"):
        n = int(spec[4:])
        stride = next(k for k in range(1, T) if -(-T // k) == n)  # len(range(0, T, k)) == ceil(T / k)
        return np.arange(0, T, stride)
    counts = [int(c) for c in spec.split(",")]
    sizes = np.full(len(counts), T // len(counts))
    sizes[: T % len(counts)] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    kept = []
    for start, size, n in zip(starts, sizes, counts):
        frac = 1.0 if n <= 1 else (size - 1) / (n - 1)
        # cumsum adds the stride in the same order as the reference's running index
        pos = np.concatenate([[0.0], np.cumsum(np.full(n - 1, frac))])
        kept.extend(start + np.round(pos).astype(int))  # np.round: half to even, like Python 3 round
    return np.unique(kept)


def _linear_abar(T=1000):
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


@pytest.mark.parametrize("spec", ["250", "ddim50", "10,15,20", "ddim25", "1000", "3,7"])
def test_kept_steps_and_betas_match_rederivation(spec):
    kept = _iddpm_kept(1000, spec)
    assert space_timesteps(1000, spec) == kept.tolist()
    d = GaussianDiffusion.create(learn_sigma=False, timestep_respacing=spec)
    np.testing.assert_array_equal(d.timestep_map, kept)
    abar = _linear_abar()[kept]
    want = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(d.betas, want, rtol=1e-12)
    # The respaced process has the same marginals q(x_t | x_0) at the kept steps.
    np.testing.assert_allclose(d.alphas_cumprod, abar, rtol=1e-12)


def test_known_values():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    k250 = space_timesteps(1000, "250")
    assert len(k250) == 250 and k250[:5] == [0, 4, 8, 12, 16] and k250[-1] == 999
    k = space_timesteps(1000, "10,15,20")
    # sections of 334, 333, 333 steps; the first strided by exactly 333 / 9 = 37
    assert len(k) == 45 and k[:10] == list(range(0, 334, 37)) and k[10] == 334 and k[-1] == 999
    d = GaussianDiffusion.create(timestep_respacing="ddim50")
    beta = np.linspace(1e-4, 0.02, 1000)
    assert d.betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert d.betas[1] == pytest.approx(1.0 - np.prod(1.0 - beta[1:21]), rel=1e-12)
    assert d.num_timesteps == 50 and d.original_num_steps == 1000
    assert GaussianDiffusion.create(timestep_respacing=[10, 15, 20]) == GaussianDiffusion.create(
        timestep_respacing="10,15,20")


def test_model_receives_original_timesteps():
    d = GaussianDiffusion.create(learn_sigma=False, timestep_respacing="ddim50")
    seen = {}

    def model_fn(x, t):
        seen["t"] = t
        return jnp.zeros_like(x)

    t = jnp.array([0, 1, 49])
    d.training_losses(model_fn, jnp.zeros((3, 4)), t, jnp.ones((3, 4)))
    np.testing.assert_array_equal(seen["t"], [0, 20, 980])


@pytest.mark.parametrize("spec, T, match", [
    ("ddim999", 1000, "no integer stride"),
    ("ddim7", 10, "no integer stride"),
    ("ddimx", 1000, "ddimN"),
    ("400,400,400", 1000, "section 0 has 334"),
    ("10,abc", 1000, "not understood"),
    ("0", 1000, "at least 1"),
])
def test_bad_respacing(spec, T, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(T, spec)


def test_respacing_needs_two_steps():
    with pytest.raises(ValueError, match="need >= 2"):
        GaussianDiffusion.create(timestep_respacing="1")
