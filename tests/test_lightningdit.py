"""LightningDiT as options of the DiT family, and its objective details (docs/design.md §5).

* Forward parity against a small PyTorch LightningDiT written from hustvl/LightningDiT
  (tests/lightningdit_torch.py), same random weights, with and without scan_layers.
* The velocity-direction (cosine) loss, LightningDiT's time convention (t = 1 data) and its
  sampling timestep shift, against direct computations; the CFG interval in a Generator.
* Presets, config errors, save/load round trips. Default DiT numbers: tests/test_dit_parity.py.
"""

import dataclasses
import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.convert.torch_layout import StateDict, linear
from unigen.convert.unigen_format import CONFIG_FILE, build_filled, module_to_flat
from unigen.diffusion import RectifiedFlow, samplers
from unigen.diffusion.flow import cosine_direction_loss, sample_shift_from_timestep_shift, shift_sigma
from unigen.models import InputSpec
from unigen.models.dit import DiT, DiTConfig, dit_config, from_section, lightningdit_config
from unigen.nn.posemb import sincos_2d
from unigen.nn.rope import apply_rope, rope_2d_freqs
from unigen.tasks.diffusion import diffusion_process

RTOL = 1e-4
TINY = dict(input_size=8, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, t, y):
    return nnx.merge(graphdef, state)(x, t, y)


def forward(model, x, t, y):
    """model(x, t, y) compiled once (eager op-by-op dispatch is slower on a busy 2-core CPU)."""
    return np.asarray(_apply(*nnx.split(model), *(jnp.asarray(a) for a in (x, t, y))))


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


# ---------------------------------------------------------------- torch LightningDiT -> unigen
def lightning_to_flat(sd, cfg: DiTConfig) -> dict:
    """The reference's state dict names/layouts -> unigen's flat parameter names."""
    src, dst = StateDict({k: v.detach().numpy() for k, v in sd.items()}, "torch LightningDiT"), {}
    d, h, dh, p, c = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.patch_size, cfg.in_channels
    w = src.take("x_embedder.proj.weight", (d, c, p, p))
    dst["x_embedder.kernel"] = w.transpose(2, 3, 1, 0).reshape(p * p * c, d)
    dst["x_embedder.bias"] = src.take("x_embedder.proj.bias", (d,))
    np.testing.assert_allclose(src.take("pos_embed", (1, cfg.grid ** 2, d))[0], sincos_2d(d, cfg.grid, cfg.grid),
                               atol=1e-6)
    linear(src, "t_embedder.mlp.0", 256, (d,), dst, "cond.t_embedder.fc1")
    linear(src, "t_embedder.mlp.2", d, (d,), dst, "cond.t_embedder.fc2")
    dst["cond.y_embedder.table"] = src.take("y_embedder.embedding_table.weight", (cfg.num_classes + 1, d))
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        linear(src, pre + "attn.qkv", d, (3, h, dh), dst, pre + "qkv")
        linear(src, pre + "attn.proj", d, (d,), dst, pre + "proj")
        dst[pre + "proj.kernel"] = dst[pre + "proj.kernel"].reshape(h, dh, d)
        if cfg.qk_norm:
            for n in ("q_norm", "k_norm"):
                dst[pre + n + ".scale"] = src.take(pre + f"attn.{n}.weight", (dh,))
                if cfg.norm_type == "layernorm":
                    dst[pre + n + ".bias"] = src.take(pre + f"attn.{n}.bias", (dh,))
        if cfg.mlp_type == "swiglu":
            linear(src, pre + "mlp.w12", d, (2, cfg.mlp_hidden), dst, pre + "mlp.w12")
            linear(src, pre + "mlp.w3", cfg.mlp_hidden, (d,), dst, pre + "mlp.w3")
        else:
            linear(src, pre + "mlp.fc1", d, (cfg.mlp_hidden,), dst, pre + "mlp.fc1")
            linear(src, pre + "mlp.fc2", cfg.mlp_hidden, (d,), dst, pre + "mlp.fc2")
        if cfg.norm_type == "rmsnorm":
            dst[pre + "norm1.scale"] = src.take(pre + "norm1.weight", (d,))
            dst[pre + "norm2.scale"] = src.take(pre + "norm2.weight", (d,))
        linear(src, pre + "adaLN_modulation.1", d, (4 if cfg.wo_shift else 6, d), dst, pre + "ada")
    linear(src, "final_layer.adaLN_modulation.1", d, (2, d), dst, "final_layer.ada")
    linear(src, "final_layer.linear", d, (p * p * cfg.out_channels,), dst, "final_layer.linear")
    if cfg.norm_type == "rmsnorm":
        dst["final_layer.norm.scale"] = src.take("final_layer.norm_final.weight", (d,))
    src.finish(ignore=(r"feat_rope\..*",))
    return dst


VARIANTS = {  # unigen options <-> the reference's flags
    "released": (dict(), dict(use_swiglu=True, use_rope=True, use_rmsnorm=True)),
    "all_on": (dict(qk_norm=True, wo_shift=True, patch_size=2),
               dict(use_swiglu=True, use_rope=True, use_rmsnorm=True, use_qknorm=True, wo_shift=True, patch_size=2)),
    "layernorm_qk": (dict(mlp_type="gelu", norm_type="layernorm", qk_norm=True),
                     dict(use_rope=True, use_qknorm=True)),
}


def ref_and_ours(variant, seed=0, scan=False):
    pytest.importorskip("torch")
    import lightningdit_torch
    ours_opts, ref_opts = VARIANTS[variant]
    cfg = lightningdit_config("LightningDiT-B/1", **{**TINY, **ours_opts}, scan_layers=scan)
    ref = lightningdit_torch.LightningDiT(**{**TINY, **ref_opts})
    lightningdit_torch.randomize(ref, seed)
    ref.eval()
    ours = build_filled(DiT, cfg, lightning_to_flat(ref.state_dict(), cfg), "test")
    return ref, ours


def inputs(batch=3, size=8, ch=4, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(batch, size, size, ch).astype(np.float32)
    t = np.array([0.0, 0.37, 1.0][:batch], np.float32)  # LightningDiT's t in [0, 1] (1 = data)
    y = np.array([1, 7, 10][:batch], np.int64)           # 10 = the null class
    return x, t, y


def run_ref(ref, x, t, y):
    import torch
    with torch.no_grad():
        out = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(y))
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("variant, scan", [("released", False), ("released", True), ("all_on", True),
                                           ("layernorm_qk", False)])
def test_forward_parity_with_reference(variant, scan):
    ref, ours = ref_and_ours(variant, seed=1, scan=scan)
    x, t, y = inputs()
    got = forward(ours, x, t, y)
    want = run_ref(ref, x, t, y)
    assert got.shape == want.shape == (3, 8, 8, 4)
    assert np.abs(want).max() > 0.1  # the blocks and the final layer are exercised
    assert max_rel_err(got, want) <= RTOL


@pytest.mark.parametrize("pt_seq_len", [None, 6])
def test_rope_matches_eva_vision_rope(pt_seq_len):
    torch = pytest.importorskip("torch")
    from lightningdit_torch import GridRope
    head_dim, n = 16, 4
    rope = GridRope(head_dim // 2, pt_seq_len=pt_seq_len or n, ft_seq_len=n)
    x = np.random.RandomState(0).randn(2, 3, n * n, head_dim).astype(np.float32)  # (B, H, T, Dh) as torch
    with torch.no_grad():
        want = rope(torch.from_numpy(x)).numpy()
    angles = jnp.asarray(rope_2d_freqs(head_dim, n, n, pt_seq_len=pt_seq_len))
    got = np.asarray(apply_rope(jnp.asarray(x.transpose(0, 2, 1, 3)), angles)).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the objective
def _numpy_direction(pred, target, eps=1e-8):
    dot = (pred * target).sum(-1)
    cos = dot / (np.maximum(np.linalg.norm(pred, axis=-1), eps) * np.maximum(np.linalg.norm(target, axis=-1), eps))
    return (1 - cos).reshape(len(pred), -1).mean(1)


def test_direction_loss_against_direct_computation():
    rs = np.random.RandomState(0)
    pred, target = rs.randn(3, 4, 4, 5).astype(np.float32), rs.randn(3, 4, 4, 5).astype(np.float32)
    pred[0, 0, 0] = 0.0  # a zero vector: the norm clamp decides (cos = 0)
    got = np.asarray(cosine_direction_loss(jnp.asarray(pred), jnp.asarray(target)))
    np.testing.assert_allclose(got, _numpy_direction(pred, target), rtol=1e-5)
    try:
        import torch
    except ImportError:
        return
    tp, tt = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (pred, target))  # NCHW, as the reference
    want = (1 - torch.nn.functional.cosine_similarity(tp, tt, dim=1)).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_direction_loss_gradient_is_finite_at_a_zero_prediction():
    # A zero-initialised final layer predicts exactly 0 at step 1; sqrt's gradient there is inf,
    # so a clamp written max(|v|, eps) made the first training step NaN.
    target = jnp.asarray(np.random.RandomState(1).randn(2, 4, 4, 3), jnp.float32)
    grad = jax.grad(lambda p: cosine_direction_loss(p, target).sum())(jnp.zeros_like(target))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_training_loss_with_direction_term_and_both_conventions():
    rs = np.random.RandomState(1)
    x0, noise = rs.randn(4, 3, 3, 2).astype(np.float32), rs.randn(4, 3, 3, 2).astype(np.float32)
    sigma = np.array([0.1, 0.4, 0.7, 0.95], np.float32)
    w = rs.randn(2, 2).astype(np.float32)

    def v_sigma(z, s):  # any function of (z, sigma): the network's answer as dz/dsigma
        return jnp.tanh(z @ w) * (1 + s.reshape(-1, 1, 1, 1))

    sd3 = RectifiedFlow.create(direction_weight=0.5, time_scale=1000.0)
    light = RectifiedFlow.create(direction_weight=0.5, time_convention="data_at_one", time_scale=1.0)
    a = sd3.training_losses(lambda z, t: v_sigma(z, t / 1000.0), jnp.asarray(x0), (jnp.asarray(sigma), jnp.asarray(noise)))
    b = light.training_losses(lambda z, t: -v_sigma(z, 1.0 - t), jnp.asarray(x0), (jnp.asarray(sigma), jnp.asarray(noise)))
    z = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
    v = np.asarray(v_sigma(jnp.asarray(z), jnp.asarray(sigma)))
    target = noise - x0
    mse = ((v - target) ** 2).mean((1, 2, 3))
    want = mse + 0.5 * _numpy_direction(v, target)
    for out in (a, b):
        np.testing.assert_allclose(np.asarray(out["loss"]), want, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out["mse"]), mse, rtol=1e-5)
    # LightningDiT's own form: x_t = t x + (1 - t) eps, target x - eps, model output in that direction
    t = 1 - sigma
    xt = t[:, None, None, None] * x0 + (1 - t[:, None, None, None]) * noise
    np.testing.assert_allclose(xt, z, rtol=1e-5, atol=1e-6)
    out_l = -v  # what the LightningDiT-convention network returned
    ut = x0 - noise
    ref = ((out_l - ut) ** 2).mean((1, 2, 3)) + 0.5 * _numpy_direction(out_l, ut)
    np.testing.assert_allclose(np.asarray(b["loss"]), ref, rtol=1e-5)
    # weight 0: the loss is the plain MSE and no extra entries appear (default unchanged)
    plain = RectifiedFlow.create().training_losses(lambda z, t: v_sigma(z, t / 1000.0), jnp.asarray(x0),
                                                   (jnp.asarray(sigma), jnp.asarray(noise)))
    assert set(plain) == {"loss", "sigma"}
    np.testing.assert_allclose(np.asarray(plain["loss"]), mse, rtol=1e-5)


MEAN, STD = np.array([1.0, -0.5], np.float32), 0.5


def gaussian_velocity(z, sigma):
    """Exact dz/dsigma for data N(MEAN, STD^2 I): E[eps - x | z_sigma]."""
    s = sigma.reshape(-1, 1)
    var = (1 - s) ** 2 * STD ** 2 + s ** 2
    r = z - (1 - s) * MEAN
    return s * r / var - (MEAN + (1 - s) * STD ** 2 * r / var)


def sd3_model(z, t):
    return gaussian_velocity(z, t / 1000.0)


def lightning_model(z, t):  # receives t = 1 - sigma, returns dx_t/dt
    return -gaussian_velocity(z, 1.0 - t)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_solver_2m"])
def test_samplers_agree_across_time_conventions(sampler):
    n = 2000
    noise = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    sd3 = RectifiedFlow.create(sample_shift=2.0)
    light = RectifiedFlow.create(time_convention="data_at_one", time_scale=1.0, sample_shift=2.0)
    run = getattr(samplers, sampler)
    a = np.asarray(run(sd3, sd3_model, (n, 2), jax.random.PRNGKey(1), steps=30, noise=noise))
    b = np.asarray(run(light, lightning_model, (n, 2), jax.random.PRNGKey(1), steps=30, noise=noise))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert np.abs(b.mean(0) - MEAN).max() < 0.05 and np.abs(b.std(0) - STD).max() < 0.05


def test_lightningdit_euler_grid_and_timestep_shift():
    """Their ODE sampler: t = linspace(0, 1, N) shifted by t' = s t / (1 + (s - 1) t), Euler on
    dx/dt = model(x, t). Ours: steps = N - 1 with sample_shift = 1 / s."""
    num_points, s = 12, 0.3
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (64, 2)))
    t = np.linspace(0.0, 1.0, num_points)
    t = s * t / (1 + (s - 1) * t)
    x = noise.copy()
    for t0, t1 in zip(t[:-1], t[1:]):
        x = x + (t1 - t0) * np.asarray(lightning_model(jnp.asarray(x), jnp.full((64,), t0, jnp.float32)))
    flow = RectifiedFlow.create(time_convention="data_at_one", time_scale=1.0,
                                sample_shift=sample_shift_from_timestep_shift(s))
    np.testing.assert_allclose(flow.sigma_grid(num_points - 1), 1 - t, atol=1e-12)
    got = np.asarray(samplers.euler(flow, lightning_model, (64, 2), jax.random.PRNGKey(0), steps=num_points - 1,
                                    noise=jnp.asarray(noise)))
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)
    # training is not shifted: only the sampling grid is
    assert flow.shift == 1.0 and sample_shift_from_timestep_shift(0) == 1.0
    np.testing.assert_allclose(shift_sigma(np.float64(0.5), 1 / s), 1 - (s * 0.5 / (1 + (s - 1) * 0.5)))


def test_model_time_and_guidance_interval_conversion():
    light = RectifiedFlow.create(time_convention="data_at_one", time_scale=1.0)
    np.testing.assert_allclose(np.asarray(light.model_time(jnp.array([0.0, 0.25, 1.0]))), [1.0, 0.75, 0.0])
    assert light.model_time_interval(0.0, 1 - 0.11) == pytest.approx((0.11, 1.0))
    assert RectifiedFlow.create().model_time_interval(0.0, 0.89) == pytest.approx((0.0, 890.0))


def test_flow_options_and_errors():
    f = RectifiedFlow.create(direction_weight=1.0, time_convention="data_at_one", time_scale=1.0, sample_shift=3.0)
    g = RectifiedFlow.create(direction_weight=1.0, time_convention="data_at_one", time_scale=1.0, sample_shift=3.0)
    assert f == g and hash(f) == hash(g) and jax.tree_util.tree_leaves(f) == []
    assert jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(f), []) == f
    with pytest.raises(ValueError, match="time_convention='t'"):
        RectifiedFlow.create(time_convention="t")
    with pytest.raises(ValueError, match="direction_weight=-1.0"):
        RectifiedFlow.create(direction_weight=-1.0)
    with pytest.raises(ValueError, match="sample_shift=0.0"):
        RectifiedFlow.create(sample_shift=0.0)
    with pytest.raises(ValueError, match="timestep_shift=-0.3"):
        sample_shift_from_timestep_shift(-0.3)
    # config.diffusion passes the new fields through
    d = ml_collections.ConfigDict(dict(kind="flow", time_sampling="logit_normal", time_scale=1.0,
                                       direction_weight=1.0, time_convention="data_at_one", timestep_shift=0.3))
    p = diffusion_process(d, learn_sigma=False)
    assert (p.direction_weight, p.time_convention, p.shift) == (1.0, "data_at_one", 1.0)
    assert p.sample_shift == pytest.approx(1 / 0.3)
    d.sample_shift = 2.0
    with pytest.raises(ValueError, match="config.diffusion.timestep_shift=0.3 and sample_shift=2.0"):
        diffusion_process(d, learn_sigma=False)
    d.sample_shift, d.time_convention = None, "t"
    with pytest.raises(ValueError, match="config.diffusion.time_convention='t'"):
        diffusion_process(d, learn_sigma=False)
    d.time_convention, d.timestep_shift = "sigma", -1.0
    with pytest.raises(ValueError, match="config.diffusion.timestep_shift=-1.0"):
        diffusion_process(d, learn_sigma=False)


# ---------------------------------------------------------------- configs
def test_presets_and_run_config():
    xl = lightningdit_config("LightningDiT-XL/1")
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size) == (28, 1152, 16, 1)
    assert (xl.mlp_type, xl.norm_type, xl.qk_norm, xl.rope, xl.pos_embed, xl.wo_shift) == \
        ("swiglu", "rmsnorm", False, "2d", "sincos", False)
    assert (xl.in_channels, xl.input_size, xl.learn_sigma, xl.out_channels, xl.mlp_hidden) == (32, 16, False, 32, 3072)
    assert dit_config("LightningDiT-B/1") == lightningdit_config("LightningDiT-B/1")
    assert (dit_config("LightningDiT-1p6B/2").hidden_size, dit_config("LightningDiT-1p6B/2").num_heads) == (1792, 28)
    plain = dit_config("DiT-XL/2")
    assert (plain.mlp_type, plain.norm_type, plain.qk_norm, plain.rope, plain.pos_embed, plain.wo_shift) == \
        ("gelu", "layernorm", False, "none", "sincos", False)
    run = ml_collections.ConfigDict(dict(
        model=dict(kind="dit", name="LightningDiT-B/1", depth=2, hidden_size=64, num_heads=4, qk_norm=True,
                   rope=None, scan_layers=True, remat=True),
        data=dict(image_size=8, channels=4, num_classes=10), train=dict(compute_dtype="float32")))
    cfg = from_section(run.model, InputSpec.of_run(run))
    assert (cfg.depth, cfg.hidden_size, cfg.qk_norm, cfg.rope, cfg.mlp_type, cfg.in_channels, cfg.input_size) == \
        (2, 64, True, "2d", "swiglu", 4, 8)
    run.model.compat = "diffusers"
    with pytest.raises(ValueError, match="compat='diffusers'.*LightningDiT"):
        from_section(run.model, InputSpec.of_run(run))


@pytest.mark.parametrize("fields, match", [
    (dict(mlp_type="geglu"), r"DiTConfig.mlp_type='geglu'.*'swiglu'"),
    (dict(norm_type="rms"), r"DiTConfig.norm_type='rms'.*'rmsnorm'"),
    (dict(qk_norm="yes"), r"DiTConfig.qk_norm='yes'.*True or False"),
    (dict(wo_shift=1), r"DiTConfig.wo_shift=1.*True or False"),
    (dict(rope="1d"), r"DiTConfig.rope='1d'.*'2d'"),
    (dict(rope="2d", hidden_size=40, num_heads=4), r"DiTConfig.rope='2d'.*head_dim.*divisible by 4, got 10"),
    (dict(rope_theta=0.0), r"DiTConfig.rope_theta=0.0.*> 0"),
    (dict(pos_embed="learned"), r"DiTConfig.pos_embed='learned'"),
    (dict(block_type="sana", mlp_type="swiglu"), r"DiTConfig.block_type='sana'.*\['mlp_type'\]"),
])
def test_bad_new_fields_name_field_and_fix(fields, match):
    with pytest.raises(ValueError, match=match):
        dit_config("DiT-S/2", **{**TINY, **fields})


def test_bad_preset_names():
    with pytest.raises(ValueError, match="unknown model name 'LightningDiT-S/1'.*LightningDiT-<size>/<patch>"):
        dit_config("LightningDiT-S/1")
    with pytest.raises(ValueError, match="unknown LightningDiT name 'DiT-B/2'"):
        lightningdit_config("DiT-B/2")
    cfg = dit_config("DiT-S/2", **{**TINY, "pos_embed": "none", "hidden_size": 18, "num_heads": 2})
    assert cfg.hidden_size == 18  # no sin-cos table: width need not be a multiple of 4


# ---------------------------------------------------------------- modules
def _tiny_model(seed=0, **overrides):
    """A LightningDiT-mode DiT with random weights everywhere (adaLN and final layer included)."""
    return _filled(lightningdit_config("LightningDiT-B/1", **{**TINY, "qk_norm": True, **overrides}), seed)


def _filled(cfg, seed=0):
    """DiT(cfg) with weights from numpy (faster than running the initialisers op by op)."""
    abstract = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    rs = np.random.RandomState(seed)
    flat = {".".join(map(str, k)): (0.1 * rs.randn(*v.shape) + (k[-1] == "scale")).astype(np.float32)
            for k, v in nnx.to_flat_state(nnx.state(abstract))}
    return build_filled(DiT, cfg, flat, "test")


def test_save_load_roundtrip_and_old_folders(tmp_path):
    model = _tiny_model(wo_shift=True)
    x, t, y = inputs()
    want = forward(model, x, t, y)
    unigen.save_pretrained(model, str(tmp_path / "m"))
    meta = json.load(open(tmp_path / "m" / CONFIG_FILE))
    assert meta["config"]["mlp_type"] == "swiglu" and meta["config"]["wo_shift"] is True
    for scan in (False, True):
        back = unigen.from_pretrained(str(tmp_path / "m"), scan_layers=scan)
        assert dataclasses.replace(back.cfg, scan_layers=False) == model.cfg
        np.testing.assert_allclose(forward(back, x, t, y), want, rtol=1e-5, atol=1e-5)
    # a folder written before these fields existed loads with DiT's defaults
    plain = _filled(dit_config("DiT-S/2", **TINY))
    unigen.save_pretrained(plain, str(tmp_path / "old"))
    path = os.path.join(tmp_path, "old", CONFIG_FILE)
    meta = json.load(open(path))
    for k in ("mlp_type", "norm_type", "qk_norm", "rope", "rope_theta", "pos_embed", "wo_shift"):
        del meta["config"][k]
    json.dump(meta, open(path, "w"))
    old = unigen.from_pretrained(str(tmp_path / "old"))
    assert old.cfg == plain.cfg


def test_scan_remat_and_gradients_agree():
    model = _tiny_model(seed=3, hidden_size=32, num_heads=2)
    x, t, y = inputs()
    graphdef, state = nnx.split(model)
    scanned = build_filled(DiT, dataclasses.replace(model.cfg, scan_layers=True, remat=True), module_to_flat(model),
                           "test")
    sg, ss = nnx.split(scanned)
    np.testing.assert_allclose(forward(scanned, x, t, y), forward(model, x, t, y), rtol=1e-5, atol=1e-5)
    flow = RectifiedFlow.create(direction_weight=1.0, time_convention="data_at_one", time_scale=1.0)
    x, y = jnp.asarray(x), jnp.asarray(y)
    sigma_noise = (jnp.array([0.2, 0.5, 0.9]), jnp.asarray(np.random.RandomState(0).randn(*x.shape), jnp.float32))

    @functools.partial(jax.jit, static_argnums=0)
    @functools.partial(jax.grad, argnums=1)
    def grad(gd, st):
        m = nnx.merge(gd, st)
        return flow.training_losses(lambda z, tt, y: m(z, tt, y), x, sigma_noise, y=y)["loss"].mean()

    g1 = module_to_flat(nnx.merge(graphdef, grad(graphdef, state)))
    g2 = module_to_flat(nnx.merge(sg, grad(sg, ss)), ("blocks",))
    assert set(g1) == set(g2) and any("q_norm" in k for k in g1)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_generator_guidance_interval_from_config():
    """config.sample.guidance_interval reaches the guidance: an interval that holds no step gives
    the unguided samples; LightningDiT's interval (t >= 0.11) changes them."""
    from unigen.sampling import Generator
    model = _tiny_model(seed=4, depth=1, input_size=4, hidden_size=32, num_heads=2)
    graphdef, state = nnx.split(model)
    flow = RectifiedFlow.create(time_convention="data_at_one", time_scale=1.0, sample_shift=1 / 0.3)
    task = types.SimpleNamespace(process=flow, sample_shape=(4, 4, 4), null_cond=lambda: {"y": 10}, clip=False,
                                 prepare_conditions=None)

    def sample(**options):
        s = ml_collections.ConfigDict({**dict(sampler="euler", steps=4, cfg_scale=1.0, guided_channels=None), **options})
        gen = Generator.from_config(s, task, graphdef)
        return gen((state,), {"y": np.array([1, 2, 3])}, jax.random.PRNGKey(0))

    base = sample()
    never = sample(cfg_scale=4.0, guidance_interval=(2.0, 3.0))
    lightning = sample(cfg_scale=4.0, guidance_interval=flow.model_time_interval(0.0, 1 - 0.11))
    np.testing.assert_allclose(never, base, rtol=1e-5, atol=1e-5)
    assert np.abs(lightning - base).max() > 1e-3
    with pytest.raises(ValueError, match=r"config.sample.guidance_interval=\(1.0, 0.5\)"):
        sample(cfg_scale=4.0, guidance_interval=(1.0, 0.5))
