"""DiT^DH (RAE's DiTwDDTHead) as the "ditdh" model kind, and RAE's dimension-dependent shift.

* Forward parity against a small PyTorch DiTwDDTHead written from bytetriper/RAE
  (tests/ditdh_torch.py), same random weights (adaLN and output layers included): trunk wider than
  or as wide as the head, scanned or not.
* The reference's initialisation, presets and `config.model` reading, config errors.
* `config.diffusion.shift_base_dim`: shift = sqrt(H*W*C / base) against RAE's transport formulas
  (t = 0 data, t' = s t / (1 + (s - 1) t)) for training t and the sampling grid; its errors.
* Two training steps through the trainer with the shift, reloaded from the work dir.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from unigen.convert.torch_layout import StateDict, linear
from unigen.convert.unigen_format import build_filled
from unigen.diffusion import RectifiedFlow
from unigen.diffusion.flow import dimension_shift, shift_sigma
from unigen.models import InputSpec, get_model_kind
from unigen.models.ddt import DiTDH, DiTDHConfig, ditdh_config, from_section
from unigen.nn.posemb import sincos_2d
from unigen.tasks.diffusion import diffusion_process

RTOL = 1e-4
# Trunk 32 wide (2 heads), head 48 wide (3 heads): head dims 16, the projector active.
TINY = dict(input_size=4, in_channels=4, hidden_size=32, depth=2, num_heads=2, head_hidden_size=48, head_depth=2,
            head_num_heads=3, num_classes=10)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, t, y):
    return nnx.merge(graphdef, state)(x, t, y)


def forward(model, x, t, y):
    return np.asarray(_apply(*nnx.split(model), *(jnp.asarray(a) for a in (x, t, y))))


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


# ---------------------------------------------------------------- torch DiTwDDTHead -> unigen
def _block_to_flat(src, pre, dst, out, sub):
    """One reference LightningDDTBlock `pre` -> unigen DiTBlock `out` (sub: its DiTConfig)."""
    d, h, dh = sub.hidden_size, sub.num_heads, sub.head_dim
    linear(src, pre + "attn.qkv", d, (3, h, dh), dst, out + "qkv")
    linear(src, pre + "attn.proj", d, (d,), dst, out + "proj")
    dst[out + "proj.kernel"] = dst[out + "proj.kernel"].reshape(h, dh, d)
    if sub.qk_norm:
        for n in ("q_norm", "k_norm"):
            dst[out + n + ".scale"] = src.take(pre + f"attn.{n}.weight", (dh,))
    linear(src, pre + "mlp.w12", d, (2, sub.mlp_hidden), dst, out + "mlp.w12")
    linear(src, pre + "mlp.w3", sub.mlp_hidden, (d,), dst, out + "mlp.w3")
    dst[out + "norm1.scale"] = src.take(pre + "norm1.weight", (d,))
    dst[out + "norm2.scale"] = src.take(pre + "norm2.weight", (d,))
    linear(src, pre + "adaLN_modulation.1", d, (4 if sub.wo_shift else 6, d), dst, out + "ada")


def ddt_to_flat(sd, cfg: DiTDHConfig) -> dict:
    """The reference's state dict (RMSNorm, SwiGLU) -> unigen's flat names. Its `blocks` run over trunk
    and head together: blocks.{depth + j} is head.j."""
    src, dst = StateDict({k: v.detach().numpy() for k, v in sd.items()}, "torch DiTwDDTHead"), {}
    d, dh, p, c = cfg.hidden_size, cfg.head_hidden_size, cfg.patch_size, cfg.in_channels
    for name, width in (("s_embedder", d), ("x_embedder", dh)):
        w = src.take(f"{name}.proj.weight", (width, c, p, p))
        dst[f"{name}.kernel"] = w.transpose(2, 3, 1, 0).reshape(p * p * c, width)
        dst[f"{name}.bias"] = src.take(f"{name}.proj.bias", (width,))
    np.testing.assert_allclose(src.take("pos_embed", (1, cfg.grid ** 2, d))[0], sincos_2d(d, cfg.grid, cfg.grid),
                               atol=1e-6)
    dst["t_embedder.freqs"] = src.take("t_embedder.W", (cfg.fourier_dim,))
    linear(src, "t_embedder.mlp.0", 2 * cfg.fourier_dim, (d,), dst, "t_embedder.fc1")
    linear(src, "t_embedder.mlp.2", d, (d,), dst, "t_embedder.fc2")
    dst["y_embedder.table"] = src.take("y_embedder.embedding_table.weight", (cfg.num_classes + 1, d))
    if d != dh:
        linear(src, "s_projector", d, (dh,), dst, "s_projector")
    for stack, sub, offset in (("trunk", cfg.trunk_config(), 0), ("head", cfg.head_config(), cfg.depth)):
        for i in range(sub.depth):
            _block_to_flat(src, f"blocks.{offset + i}.", dst, f"{stack}.{i}.", sub)
    linear(src, "final_layer.adaLN_modulation.1", dh, (2, dh), dst, "final_layer.ada")
    linear(src, "final_layer.linear", dh, (p * p * c,), dst, "final_layer.linear")
    dst["final_layer.norm.scale"] = src.take("final_layer.norm_final.weight", (dh,))
    src.finish(ignore=(r"(enc|dec)_feat_rope\..*",))
    return dst


VARIANTS = {  # unigen fields <-> the reference's arguments
    "projector": (dict(scan_layers=True, remat=True), dict(hidden_size=(32, 48), num_heads=(2, 3))),
    "equal_widths": (dict(head_hidden_size=32, head_num_heads=4, qk_norm=True, wo_shift=True),
                     dict(hidden_size=(32, 32), num_heads=(2, 4), use_qknorm=True, wo_shift=True)),
}


def inputs(batch=3, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(batch, 4, 4, 4).astype(np.float32)
    t = np.array([0.0, 0.37, 1.0][:batch], np.float32)  # RAE's t in [0, 1] (0 = data)
    y = np.array([1, 7, 10][:batch], np.int64)           # 10 = the null class
    return x, t, y


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_parity_with_reference(variant):
    torch = pytest.importorskip("torch")
    import ditdh_torch
    ours_opts, ref_opts = VARIANTS[variant]
    cfg = ditdh_config("DiTDH-S", **{**TINY, **ours_opts})
    torch.manual_seed(0)  # the fixed Fourier W
    ref = ditdh_torch.DiTDH(**{**dict(input_size=4, in_channels=4, depth=(2, 2), num_classes=10), **ref_opts})
    ditdh_torch.randomize(ref, 1)
    ref.eval()
    assert isinstance(ref.s_projector, torch.nn.Linear) == (variant == "projector")
    ours = build_filled(DiTDH, cfg, ddt_to_flat(ref.state_dict(), cfg), "test")
    assert (ours.s_projector is not None) == (variant == "projector")
    x, t, y = inputs()
    got = forward(ours, x, t, y)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(y))
    want = want.permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (3, 4, 4, 4)
    assert np.abs(want).max() > 0.1  # the whole network is exercised
    err = max_rel_err(got, want)
    print(f"{variant}: max relative error {err:.2e}")
    assert err <= RTOL


def _random_filled(make, seed=0):
    """A module `make()` with random numpy weights (cheaper than running its initialisers op by op)."""
    abstract = nnx.eval_shape(make)
    rs = np.random.RandomState(seed)
    graphdef, state = nnx.split(abstract)
    flat = {".".join(map(str, k)): (0.3 * rs.randn(*v.shape) + (k[-1] == "scale")).astype(np.float32)
            for k, v in nnx.to_flat_state(state)}
    from unigen.convert.weights import fill_module
    return fill_module(abstract, flat, source="test")


def test_per_token_condition_in_the_dit_block():
    """A (B, T, D) condition whose rows all equal the (B, D) condition gives the same block and final
    layer outputs; another row on one token changes that token only (the final layer)."""
    from unigen.models.dit import DiTBlock, FinalLayer, lightningdit_config
    cfg = lightningdit_config("LightningDiT-B/1", input_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2)
    block = _random_filled(lambda: DiTBlock(cfg, rngs=nnx.Rngs(0)), 1)
    final = _random_filled(lambda: FinalLayer(cfg, rngs=nnx.Rngs(0)), 2)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def run(graphdef, state, which, x, c):
        return nnx.merge(graphdef, state)(x, c)

    rs = np.random.RandomState(3)
    x, c = jnp.asarray(rs.randn(2, 4, 16), jnp.float32), jnp.asarray(rs.randn(2, 16), jnp.float32)
    per_token = jnp.broadcast_to(c[:, None], (2, 4, 16))
    for which, module in (("block", block), ("final", final)):
        graphdef, state = nnx.split(module)
        want = np.asarray(run(graphdef, state, which, x, c))
        np.testing.assert_allclose(np.asarray(run(graphdef, state, which, x, per_token)), want, rtol=1e-5, atol=1e-5)
    graphdef, state = nnx.split(final)
    changed = np.asarray(run(graphdef, state, "final", x, per_token.at[:, 0].add(1.0))) - want
    assert np.abs(changed[:, 0]).max() > 1e-3 and not changed[:, 1:].any()


# ---------------------------------------------------------------- initialisation, presets, configs
def test_initialisation_follows_the_reference():
    cfg = ditdh_config("DiTDH-S", **TINY)
    # the initialisers compiled as one program (op by op they compile one small program per shape)
    state = jax.jit(lambda: nnx.state(DiTDH(cfg, rngs=nnx.Rngs(0))))()
    flat = {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(state)}
    model = nnx.eval_shape(lambda: DiTDH(cfg, rngs=nnx.Rngs(0)))  # variable kinds and metadata
    zero = [k for k in flat if ".ada." in k or k.startswith("final_layer.") and not k.endswith("norm.scale")]
    assert zero and all(not flat[k].any() for k in zero)
    for k in ("s_embedder.bias", "x_embedder.bias"):
        assert not flat[k].any()
    assert abs(flat["y_embedder.table"].std() - 0.02) < 0.005
    assert abs(flat["t_embedder.fc1.kernel"].std() - 0.02) < 0.003
    freqs = flat["t_embedder.freqs"]
    assert freqs.shape == (256,) and 0.8 < freqs.std() < 1.2
    for k, fan_in in (("trunk.0.qkv.kernel", 32), ("head.1.proj.kernel", 48), ("head.0.mlp.w3.bias", 128),
                      ("s_projector.kernel", 32), ("t_embedder.fc2.bias", 32)):
        bound = 1 / math.sqrt(fan_in)  # torch nn.Linear's default
        assert flat[k].max() <= bound and flat[k].min() >= -bound and flat[k].max() > 0.5 * bound, k
    # W is a buffer, not a Param: the trainer never optimises it
    params = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert "t_embedder.freqs" not in params and "t_embedder.fc1.kernel" in params
    # logical axis names on every variable
    for k, v in nnx.to_flat_state(nnx.state(model)):
        axes = v.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == len(v.shape), k


def test_presets_and_run_config():
    for size, (depth, width, heads) in {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                        "XL": (28, 1152, 16)}.items():
        c = ditdh_config(f"DiTDH-{size}")
        assert (c.depth, c.hidden_size, c.num_heads) == (depth, width, heads)
        assert (c.head_depth, c.head_hidden_size, c.head_num_heads, c.patch_size) == (2, 2048, 16, 1)
        assert (c.mlp_type, c.norm_type, c.qk_norm, c.rope, c.pos_embed, c.wo_shift) == \
            ("swiglu", "rmsnorm", False, "2d", "sincos", False)
        assert (c.in_channels, c.input_size, c.num_classes, c.class_dropout_prob) == (768, 16, 1000, 0.1)
    run = ml_collections.ConfigDict(dict(
        model=dict(kind="ditdh", name="DiTDH-XL", head_depth=None, scan_layers=True),
        data=dict(image_size=256, channels=3, num_classes=1000, latent_encoder="some/rae", latent_downsample=16,
                  latent_channels=768),
        train=dict(compute_dtype="bfloat16")))
    cfg = from_section(run.model, InputSpec.of_run(run))
    assert cfg == ditdh_config("DiTDH-XL", scan_layers=True, dtype="bfloat16")
    kind = get_model_kind("ditdh")
    assert kind.config_for(run) == cfg and kind.stacked(cfg) == ("trunk", "head")
    assert set(kind.conditions(cfg)) == {"y"} and kind.conditions(cfg)["y"].null == 1000
    assert kind.conditions(dataclasses.replace(cfg, num_classes=0)) == {}
    run.model.compat = "official"
    with pytest.raises(ValueError, match=r"config.model.compat='official': not a DiTDH field"):
        from_section(run.model, InputSpec.of_run(run))
    del run.model["compat"]
    run.model.in_channels = 4
    with pytest.raises(ValueError, match=r"config.model.in_channels=4: set by the data"):
        from_section(run.model, InputSpec.of_run(run))


@pytest.mark.parametrize("fields, match", [
    (dict(head_hidden_size=50), r"DiTDHConfig.head_hidden_size=50: not divisible by head_num_heads=3"),
    (dict(head_hidden_size=60, head_num_heads=6), r"DiTDHConfig.head_hidden_size=60: 2-D RoPE.*= 10.*rope='none'"),
    (dict(head_depth=0), r"DiTDHConfig.head_depth=0: must be a positive integer"),
    (dict(pos_embed="learned"), r"DiTDHConfig.pos_embed='learned'"),
    (dict(patch_size=3), r"DiTDHConfig.input_size=4: not divisible by patch_size=3"),
    (dict(mlp_type="geglu"), r"DiTDHConfig.mlp_type='geglu'.*'swiglu'"),
    (dict(fourier_scale=0.0), r"DiTDHConfig.fourier_scale=0.0: must be a number > 0"),
    (dict(dtype="float64"), r"DiTDHConfig.dtype='float64'"),
])
def test_bad_fields_name_field_and_fix(fields, match):
    with pytest.raises(ValueError, match=match):
        ditdh_config("DiTDH-S", **{**TINY, **fields})


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match=r"unknown DiT\^DH name 'DiTDH-XXL'.*DiTDH-<size>"):
        ditdh_config("DiTDH-XXL")
    with pytest.raises(ValueError, match=r"unknown DiTDHConfig fields \['depths'\]"):
        ditdh_config("DiTDH-S", depths=2)
    cfg = ditdh_config("DiTDH-S", **{**TINY, "depth": 1, "head_depth": 1})
    model = nnx.eval_shape(lambda: DiTDH(cfg, rngs=nnx.Rngs(0)))  # the inputs are checked before any weight is read
    with pytest.raises(ValueError, match="NHWC input with C=4"):
        model(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="class-conditional: pass labels y"):
        model(jnp.zeros((1, 4, 4, 4)), jnp.zeros((1,)))


# ---------------------------------------------------------------- the dimension-dependent shift
def test_dimension_shift_is_raes_time_dist_shift():
    s = dimension_shift((16, 16, 768), 4096)  # RAE ImageNet-256: time_dist_shift_dim 196608, base 4096
    assert s == pytest.approx(math.sqrt(196608 / 4096))
    d = ml_collections.ConfigDict(dict(kind="flow", time_sampling="logit_normal", shift=1.0, time_scale=1.0,
                                       shift_base_dim=4096))
    flow = diffusion_process(d, learn_sigma=False, input_shape=(16, 16, 768))
    assert flow.shift == pytest.approx(s) and flow.sample_shift is None  # the resolved shift, read back
    # RAE's training t: logit-normal t, then t' = s t / (1 + (s - 1) t), with t = 0 data (= unigen's sigma)
    key = jax.random.PRNGKey(0)
    base = np.asarray(RectifiedFlow.create(time_scale=1.0).sample_sigma(key, 64), np.float64)
    np.testing.assert_allclose(np.asarray(flow.sample_sigma(key, 64)), s * base / (1 + (s - 1) * base), rtol=1e-5)
    # RAE's ODE grid: t = 1 - linspace(0, 1, N), shifted the same way; N points are N - 1 steps here
    n = 9
    t = 1 - np.linspace(0.0, 1.0, n)
    np.testing.assert_allclose(flow.sigma_grid(n - 1), s * t / (1 + (s - 1) * t), atol=1e-12)
    # its path: x_t = (1 - t) x + t eps (ICPlan: alpha_t = 1 - t, sigma_t = t), target eps - x; the model gets t
    rs = np.random.RandomState(0)
    x0, eps, tt = rs.randn(2, 3).astype(np.float32), rs.randn(2, 3).astype(np.float32), np.float32([0.2, 0.9])
    np.testing.assert_allclose(np.asarray(flow.interpolate(jnp.asarray(x0), jnp.asarray(tt), jnp.asarray(eps))),
                               (1 - tt[:, None]) * x0 + tt[:, None] * eps, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(flow.model_time(jnp.asarray(tt))), tt)
    # a small input: s < 1 is allowed (RAE asserts s >= 1)
    small = diffusion_process(d, learn_sigma=False, input_shape=(4, 4, 4))
    assert small.shift == pytest.approx(0.125)
    assert shift_sigma(0.5, small.shift) < 0.5


def test_shift_base_dim_errors():
    d = ml_collections.ConfigDict(dict(kind="flow", shift=2.0, time_scale=1.0, shift_base_dim=4096))
    with pytest.raises(ValueError, match=r"config.diffusion.shift=2.0 and shift_base_dim=4096: give one"):
        diffusion_process(d, learn_sigma=False, input_shape=(16, 16, 768))
    d.shift = 1.0
    with pytest.raises(ValueError, match=r"config.diffusion.shift_base_dim=4096: needs the model input's shape"):
        diffusion_process(d, learn_sigma=False)
    d.shift_base_dim = 0
    with pytest.raises(ValueError, match=r"config.diffusion.shift_base_dim=0 must be a number > 0"):
        diffusion_process(d, learn_sigma=False, input_shape=(16, 16, 768))
    g = ml_collections.ConfigDict(dict(kind="gaussian", num_timesteps=1000, beta_schedule="linear",
                                       shift_base_dim=4096))
    with pytest.raises(ValueError, match=r"config.diffusion.shift_base_dim=4096: a rectified-flow option"):
        diffusion_process(g, learn_sigma=False)
    g.shift_base_dim = None  # the default: off
    assert diffusion_process(g, learn_sigma=False).num_timesteps == 1000


# ---------------------------------------------------------------- training
def test_two_training_steps_with_the_dimension_shift(tmp_path):
    import os

    import unigen
    from unigen.training.build import validate
    from unigen.training.config import load_config_file
    from unigen.training.loop import train
    cfg = load_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                        "dit_digits.py"))
    cfg.model = ml_collections.ConfigDict(dict(
        kind="ditdh", name="DiTDH-S", depth=1, hidden_size=32, num_heads=2, head_hidden_size=48, head_depth=1,
        head_num_heads=3, patch_size=2, scan_layers=True))
    # RAE's objective on the 8x8x1 digits: t in [0, 1], shift sqrt(64 / 16) = 2
    cfg.diffusion = ml_collections.ConfigDict(dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0,
                                                   shift=1.0, time_scale=1.0, shift_base_dim=16))
    for k, v in dict(steps=2, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2, sample_every=2).items():
        cfg.train[k] = v
    cfg.sample.steps, cfg.sample.per_class = 2, 1  # a guided grid (cfg_scale 1.15: the null label) at step 2
    cfg.eval.at_end = False
    run = validate(cfg)
    assert run.task.process.shift == pytest.approx(2.0)
    result = train(cfg, str(tmp_path), progress=False)
    assert result["step"] == 2 and (tmp_path / "samples_0000002.png").exists()
    model = unigen.from_pretrained(str(tmp_path))
    assert isinstance(model, DiTDH) and model.cfg.head_hidden_size == 48 and model.cfg.in_channels == 1
    # the fixed Fourier W travels with the frozen parts (never optimised) and comes back with the model
    from unigen.training.state import split_model
    _, params, _, frozen = split_model(model)
    assert "freqs" in frozen["t_embedder"] and "freqs" not in params["t_embedder"]
    assert (tmp_path / "frozen").is_dir() and 0.7 < float(np.std(model.t_embedder.freqs[...])) < 1.3
    assert np.abs(np.asarray(model.final_layer.linear.bias[...])).max() > 0  # trained
