"""unigen's flow-match Euler scheduler (unigen/pipelines/flow_match.py) against diffusers'
FlowMatchEulerDiscreteScheduler: the grids `set_timesteps` makes after the SD3 and Flux pipelines'
calls, for the released scheduler configs, several step counts and (non-square) image sizes; the
whole compiled loop against diffusers' `step` in a Python loop; the refusals and the registry.
"""

import ast
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.errors import ConfigError
from unigen.pipelines.flow_match import FlowMatchEuler, linear_sigmas, scheduler_from_config

torch = pytest.importorskip("torch")
diffusers_euler = pytest.importorskip("diffusers.schedulers.scheduling_flow_match_euler_discrete")
Reference = diffusers_euler.FlowMatchEulerDiscreteScheduler

# The released scheduler/scheduler_config.json files, as published (checked against copies of the
# hub folders: stabilityai/stable-diffusion-3-medium-diffusers, stable-diffusion-3.5-medium,
# black-forest-labs/FLUX.1-dev, FLUX.1-schnell).
_FLUX = dict(_class_name="FlowMatchEulerDiscreteScheduler", _diffusers_version="0.30.0.dev0", base_image_seq_len=256,
             base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000)
SD3_MEDIUM = dict(_class_name="FlowMatchEulerDiscreteScheduler", _diffusers_version="0.29.0.dev0",
                  num_train_timesteps=1000, shift=3.0)
SD35_MEDIUM = dict(_FLUX, _diffusers_version="0.32.0.dev0", shift=3.0, use_dynamic_shifting=False)
FLUX_DEV = dict(_FLUX, shift=3.0, use_dynamic_shifting=True)
FLUX_SCHNELL = dict(_FLUX, shift=1.0, use_dynamic_shifting=False)
STEPS = (1, 4, 28, 50)
SIZES = ((1024, 1024), (768, 1360), (512, 832), (1440, 640))  # (H, W) pixels
ATOL = 1e-6


def _pipeline_function(module: str, name: str):
    """A module-level function of an installed diffusers pipeline file, compiled from its source
    (importing the pipeline module would import transformers' text encoders: tens of seconds)."""
    path = importlib.util.find_spec(module.rsplit(".", 1)[0]).submodule_search_locations[0]
    path = os.path.join(path, module.rsplit(".", 1)[1] + ".py")
    tree = ast.parse(open(path).read())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    scope = {}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), scope)
    return scope[name]


flux_calculate_shift = _pipeline_function("diffusers.pipelines.flux.pipeline_flux", "calculate_shift")
sd3_calculate_shift = _pipeline_function("diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3",
                                         "calculate_shift")


def _flux_seq_len(h, w):
    """FluxPipeline's image_seq_len: latents 8x smaller, packed 2x2: (H/16)(W/16) tokens."""
    return (h // 16) * (w // 16)


def _sd3_seq_len(h, w, patch=2):
    """StableDiffusion3Pipeline's (latent h // patch) * (latent w // patch)."""
    return (h // 8 // patch) * (w // 8 // patch)


def _reference_sd3(config, n, h, w):
    """What StableDiffusion3Pipeline hands set_timesteps: mu only with use_dynamic_shifting."""
    ref = Reference.from_config(config)
    kwargs = {}
    if ref.config.get("use_dynamic_shifting", None):
        c = ref.config
        kwargs["mu"] = sd3_calculate_shift(_sd3_seq_len(h, w), c.get("base_image_seq_len", 256),
                                           c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                           c.get("max_shift", 1.16))
    ref.set_timesteps(n, **kwargs)
    return ref


def _reference_flux(config, n, h, w):
    """What FluxPipeline hands set_timesteps: sigmas linspace(1, 1/N, N) and mu, always."""
    ref = Reference.from_config(config)
    c = ref.config
    mu = flux_calculate_shift(_flux_seq_len(h, w), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                              c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    ref.set_timesteps(n, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return ref


def _assert_grid(ours, ref):
    sigmas, timesteps = ours
    assert sigmas.dtype == np.float32 and timesteps.dtype == np.float32
    assert sigmas.shape == (len(timesteps) + 1,)
    np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(timesteps, ref.timesteps.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("config", [SD3_MEDIUM, SD35_MEDIUM], ids=["sd3-medium", "sd3.5-medium"])
def test_sd3_grids_equal_diffusers(config):
    sched = FlowMatchEuler.from_config(config)
    assert sched.shift == 3.0 and not sched.use_dynamic_shifting
    for n in STEPS:
        _assert_grid(sched.schedule(n), _reference_sd3(config, n, 1024, 1024))
    # the image size does not enter a static shift
    _assert_grid(sched.schedule(28, image_seq_len=_sd3_seq_len(768, 1360)), _reference_sd3(config, 28, 768, 1360))


@pytest.mark.parametrize("config", [FLUX_DEV, FLUX_SCHNELL], ids=["flux-dev", "flux-schnell"])
def test_flux_grids_equal_diffusers(config):
    sched = FlowMatchEuler.from_config(config)
    for n in STEPS:
        np.testing.assert_array_equal(linear_sigmas(n), np.linspace(1.0, 1 / n, n))
        for h, w in SIZES:
            seq = _flux_seq_len(h, w)
            assert sched.mu_for(seq) == pytest.approx(flux_calculate_shift(seq), abs=1e-12)
            _assert_grid(sched.schedule(n, image_seq_len=seq, sigmas=linear_sigmas(n)),
                         _reference_flux(config, n, h, w))


def test_released_values():
    dev, schnell = FlowMatchEuler.from_config(FLUX_DEV), FlowMatchEuler.from_config(FLUX_SCHNELL)
    assert dev.use_dynamic_shifting and (dev.base_shift, dev.max_shift) == (0.5, 1.15)
    assert (dev.base_image_seq_len, dev.max_image_seq_len) == (256, 4096)
    assert dev.mu_for(256) == pytest.approx(0.5) and dev.mu_for(4096) == pytest.approx(1.15)
    assert schnell.shift == 1.0 and not schnell.use_dynamic_shifting
    # schnell: no shift at all, the Flux grid as given
    s, t = schnell.schedule(4, image_seq_len=4096, sigmas=linear_sigmas(4))
    np.testing.assert_allclose(s, [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)
    np.testing.assert_allclose(t, [1000, 750, 500, 250], atol=1e-4)
    # the SD3 grid starts at sigma 1 and is shifted (twice at its far end, as diffusers)
    s, _ = FlowMatchEuler.from_config(SD3_MEDIUM).schedule(28)
    assert s[0] == 1.0 and s[-1] == 0.0 and np.all(np.diff(s) < 0)


@pytest.mark.parametrize("extra", [
    dict(shift_terminal=0.1, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024),
    dict(use_karras_sigmas=True),
    dict(use_exponential_sigmas=True, use_dynamic_shifting=False, shift=3.0),
    dict(invert_sigmas=True, use_dynamic_shifting=False, shift=2.0),
    dict(time_shift_type="linear"),
    dict(shift_terminal=0.02, use_karras_sigmas=True, use_dynamic_shifting=False, shift=2.5),
], ids=["terminal-ltx", "karras", "exponential", "invert", "linear-time-shift", "terminal+karras"])
def test_optional_fields_equal_diffusers(extra):
    config = dict(FLUX_DEV, **extra)
    sched = FlowMatchEuler.from_config(config)
    for n in (2, 7, 28):
        for h, w in SIZES[:2]:
            seq = _flux_seq_len(h, w)
            _assert_grid(sched.schedule(n, image_seq_len=seq, sigmas=linear_sigmas(n)),
                         _reference_flux(config, n, h, w))
            _assert_grid(sched.schedule(n, image_seq_len=_sd3_seq_len(h, w)), _reference_sd3(config, n, h, w))


# ---- the loop ------------------------------------------------------------------------------------
_MIX = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32) * 0.3 - 0.5 * np.eye(8, dtype=np.float32)


def _velocity_jax(x, t):
    return jnp.einsum("...c,cd->...d", x, jnp.asarray(_MIX)) + 0.7 * t


def _velocity_torch(x, t):
    return torch.einsum("...c,cd->...d", x, torch.from_numpy(_MIX)) + 0.7 * t


def _reference_loop(ref, noise, time_scale, dtype=torch.float32):
    """The pipelines' denoising loop (velocity only; no transformer), in torch, step by step."""
    latents = torch.from_numpy(noise).to(dtype)
    for t in ref.timesteps:
        v = _velocity_torch(latents.float(), t.to(latents.dtype).float() / time_scale).to(dtype)
        latents = ref.step(v, t, latents, return_dict=False)[0].to(dtype)
    return latents.float().numpy()


@pytest.mark.parametrize("pipeline", ["sd3", "flux-dev"])
def test_loop_equals_diffusers_step(pipeline):
    noise = np.random.default_rng(1).normal(size=(2, 6, 4, 8)).astype(np.float32)
    if pipeline == "sd3":
        config, n, time_scale = SD3_MEDIUM, 12, 1000.0  # SD3's velocity made small for 1000-scale timesteps
        ref = _reference_sd3(config, n, 1024, 1024)
        sigmas, timesteps = FlowMatchEuler.from_config(config).schedule(n)
    else:
        config, n, time_scale = FLUX_DEV, 9, 1000.0  # FluxPipeline feeds timesteps / 1000
        ref = _reference_flux(config, n, 768, 1360)
        sigmas, timesteps = FlowMatchEuler.from_config(config).schedule(n, _flux_seq_len(768, 1360), linear_sigmas(n))
    want = _reference_loop(ref, noise, time_scale)
    sched = FlowMatchEuler.from_config(config)
    run = jax.jit(lambda x, s, t: sched.sample(lambda z, tt: _velocity_jax(z, tt / time_scale), x, s, timesteps=t))
    got = np.asarray(run(noise, sigmas, timesteps))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bf16_velocity_follows_diffusers_dtypes():
    """A bf16 network: diffusers steps in float32 and hands back bf16; the latents stay bf16."""
    noise = np.random.default_rng(2).normal(size=(1, 4, 4, 8)).astype(np.float32)
    ref = _reference_flux(FLUX_DEV, 6, 1024, 1024)
    want = _reference_loop(ref, noise, 1000.0, dtype=torch.bfloat16)
    sched = FlowMatchEuler.from_config(FLUX_DEV)
    sigmas, timesteps = sched.schedule(6, _flux_seq_len(1024, 1024), linear_sigmas(6))

    def velocity(z, t):
        t = t.astype(jnp.bfloat16).astype(jnp.float32) / 1000.0
        return _velocity_jax(z.astype(jnp.float32), t).astype(jnp.bfloat16)

    got = jax.jit(lambda x, s, t: sched.sample(velocity, x, s, timesteps=t))(
        jnp.asarray(noise, jnp.bfloat16), sigmas, timesteps)
    assert got.dtype == jnp.bfloat16
    # bit for bit: dt and dt * v rounded to bf16 as torch rounds them
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)


def test_step_is_diffusers_euler_update():
    sched = FlowMatchEuler.from_config(SD3_MEDIUM)
    sigmas, timesteps = sched.schedule(5)
    x = np.random.default_rng(3).normal(size=(3, 8)).astype(np.float32)
    v = np.random.default_rng(4).normal(size=(3, 8)).astype(np.float32)
    ref = _reference_sd3(SD3_MEDIUM, 5, 1024, 1024)
    ref.set_begin_index(2)
    want = ref.step(torch.from_numpy(v), ref.timesteps[2], torch.from_numpy(x), return_dict=False)[0].numpy()
    np.testing.assert_allclose(np.asarray(sched.step(x, v, 2, sigmas)), want, rtol=0, atol=1e-6)


def test_one_compile_per_length_and_padded_steps():
    sched = FlowMatchEuler.from_config(FLUX_DEV)
    traces = []

    def run(x, s, t, steps=None):
        traces.append(1)
        return sched.sample(lambda z, tt: _velocity_jax(z, tt / 1000.0), x, s, timesteps=t, steps=steps)

    fixed = jax.jit(run)
    x = np.random.default_rng(5).normal(size=(1, 4, 8)).astype(np.float32)
    for h, w in SIZES:  # new image sizes: new sigma values, same length, no new compile
        fixed(x, *sched.schedule(10, _flux_seq_len(h, w), linear_sigmas(10)))
    assert len(traces) == 1
    # padded to one length with a traced step count: every step count shares one compile
    grids = [sched.schedule(n, 4096, linear_sigmas(n)) for n in (3, 10, 20)]
    want = [np.asarray(fixed(x, s, t)) for s, t in grids]  # one compile per step count here
    padded, traces[:] = jax.jit(run), []
    for (s, t), w in zip(grids, want):
        got = padded(x, np.pad(s, (0, 21 - s.size)), np.pad(t, (0, 20 - t.size)), jnp.int32(t.size))
        np.testing.assert_allclose(np.asarray(got), w, rtol=0, atol=1e-6)
    assert len(traces) == 1


def test_scheduler_is_a_static_pytree():
    sched = FlowMatchEuler.from_config(FLUX_DEV)
    assert jax.tree_util.tree_leaves(sched) == []
    assert jax.tree_util.tree_map(lambda a: a, sched) == sched and hash(sched) == hash(FlowMatchEuler(**{
        k: getattr(sched, k) for k in ("num_train_timesteps", "shift", "use_dynamic_shifting")}, where="other"))
    sigmas, _ = sched.schedule(4, 1024, linear_sigmas(4))
    out = jax.jit(lambda s, x, g: s.sample(lambda z, t: -z, x, g))(sched, jnp.ones((2,)), sigmas)
    assert out.shape == (2,)


# ---- reading configs, refusals, registry ---------------------------------------------------------
def test_reads_folders_and_registry(tmp_path):
    pipe = tmp_path / "FLUX.1-dev"
    (pipe / "scheduler").mkdir(parents=True)
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(FLUX_DEV, unknown_future_field=3)))
    want = FlowMatchEuler.from_config(FLUX_DEV)
    for where in (pipe, pipe / "scheduler", pipe / "scheduler" / "scheduler_config.json", str(pipe)):
        assert FlowMatchEuler.from_config(where) == want
        assert scheduler_from_config(where) == want
    with pytest.raises(ConfigError, match="no scheduler_config.json"):
        FlowMatchEuler.from_config(tmp_path)
    # a config without _class_name is read as the class asked for (diffusers' Cls.from_config)
    assert FlowMatchEuler.from_config({"shift": 3.0}) == FlowMatchEuler(shift=3.0)


def test_refusals_name_the_field():
    for field in ("use_beta_sigmas", "stochastic_sampling"):
        with pytest.raises(ConfigError, match=rf"'{field}' = True: .*set it to false"):
            FlowMatchEuler.from_config(dict(FLUX_DEV, **{field: True}))
        with pytest.raises(ConfigError, match=field):
            FlowMatchEuler(**{field: True})
    with pytest.raises(ConfigError, match="only one of"):
        FlowMatchEuler.from_config(dict(FLUX_DEV, use_karras_sigmas=True, use_exponential_sigmas=True))
    with pytest.raises(ConfigError, match="'time_shift_type' = 'cosine'"):
        FlowMatchEuler.from_config(dict(FLUX_DEV, time_shift_type="cosine"))
    with pytest.raises(ConfigError, match="'shift' = '3' has the wrong type"):
        FlowMatchEuler.from_config(dict(SD3_MEDIUM, shift="3"))
    with pytest.raises(ConfigError, match="'use_dynamic_shifting' = 1 has the wrong type"):
        FlowMatchEuler.from_config(dict(SD3_MEDIUM, use_dynamic_shifting=1))
    with pytest.raises(ConfigError, match="'max_shift' = None"):
        FlowMatchEuler.from_config(dict(FLUX_DEV, max_shift=None))
    with pytest.raises(ConfigError, match="'shift' = 0.0"):
        FlowMatchEuler.from_config(dict(SD3_MEDIUM, shift=0))
    with pytest.raises(ConfigError, match="shift_terminal=0.1 cannot stretch"):
        FlowMatchEuler.from_config(dict(SD3_MEDIUM, shift_terminal=0.1)).schedule(1)


def test_wrong_class_and_missing_image_size():
    ddim = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000}
    with pytest.raises(ConfigError, match="'DDIMScheduler' is not FlowMatchEulerDiscreteScheduler"):
        FlowMatchEuler.from_config(ddim)
    with pytest.raises(ConfigError, match="'DDIMScheduler' is not supported.*FlowMatchEulerDiscreteScheduler"):
        scheduler_from_config(ddim)
    # read another class's config as flow-match Euler, as diffusers' from_config does
    assert scheduler_from_config(ddim, class_name="FlowMatchEulerDiscreteScheduler") == FlowMatchEuler()
    dev = FlowMatchEuler.from_config(FLUX_DEV, where="FLUX.1-dev/scheduler/scheduler_config.json")
    with pytest.raises(ConfigError, match="FLUX.1-dev/scheduler.*use_dynamic_shifting is true.*image_seq_len"):
        dev.schedule(28, sigmas=linear_sigmas(28))
    np.testing.assert_array_equal(dev.schedule(28, mu=dev.mu_for(4096), sigmas=linear_sigmas(28))[0],
                                  dev.schedule(28, 4096, linear_sigmas(28))[0])
    with pytest.raises(ConfigError, match="give num_inference_steps=5 values"):
        dev.schedule(5, 4096, linear_sigmas(4))
    with pytest.raises(ConfigError, match="num_inference_steps=0"):
        dev.schedule(0, 4096)
