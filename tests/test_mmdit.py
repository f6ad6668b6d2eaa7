"""MM-DiT (SD3 / SD3.5): parity with diffusers `SD3Transformer2DModel`, loading, scan, backends.

The parity tests need torch + diffusers (imported inside each test); the rest runs without them.
Tiny models: width 16 (2 heads x 8), 3 layers, a 10 x 10 position table for sample_size 8 /
patch 2 (base_size 4, so positions are scaled and centre-cropped), non-square 6 x 10 inputs.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.convert.unigen_format import build_filled, module_to_flat
from unigen.errors import ConfigError, WeightError
from unigen.models import MMDiT, MMDiTConfig, get_model_kind

RTOL = 1e-4
TINY = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10,
            pos_embed_max_size=10)
SD35 = dict(qk_norm="rms_norm", dual_attention_layers=(0,))


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def inputs(batch=2, height=6, width=10, tokens=5, seed=0):
    rs = np.random.RandomState(seed)
    return (rs.randn(batch, height, width, 4).astype(np.float32), rs.uniform(0, 1000, batch).astype(np.float32),
            rs.randn(batch, tokens, 12).astype(np.float32), rs.randn(batch, 10).astype(np.float32))


def run(model, x, t, context, pooled):
    """The model's output, as the library runs it: split once, merged inside one jit."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    return np.asarray(fn(state, *(jnp.asarray(a) for a in (x, t, context, pooled))))


# ---------------------------------------------------------------- parity with diffusers
def diffusers_model(folder, seed=0, **overrides):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(**{**TINY, **overrides})
    with torch.no_grad():  # every parameter random: default inits (RMSNorm weights of one, zero
        for p in model.parameters():  # biases) would hide swapped or misplaced weights
            p.copy_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(str(folder))
    return model


def run_ref(model, x, t, context, pooled):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(context), torch.from_numpy(pooled),
                    torch.from_numpy(t)).sample
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("variant", [{}, {"qk_norm": "rms_norm", "pos_embed_max_size": None}, SD35],
                         ids=["sd3", "qk_norm_no_crop", "sd35_dual"])
def test_diffusers_parity(tmp_path, variant):
    pytest.importorskip("torch")
    model = diffusers_model(tmp_path / "sd3", seed=1, **variant)
    ours = unigen.from_pretrained(str(tmp_path / "sd3"))
    assert isinstance(ours, MMDiT) and ours.cfg.qk_norm == variant.get("qk_norm")
    x, t, context, pooled = inputs()
    err = max_rel_err(run(ours, x, t, context, pooled), run_ref(model, x, t, context, pooled))
    assert err <= RTOL, err


def test_pipeline_folder_with_scan_override(tmp_path):
    pytest.importorskip("torch")
    model = diffusers_model(tmp_path / "pipe" / "transformer", seed=2, **SD35)
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    ours = unigen.from_pretrained(str(tmp_path / "pipe"), subfolder="transformer", scan_layers=True)
    assert ours.cfg.scan_layers and get_model_kind("mmdit").stacked(ours.cfg) == ("blocks_0", "blocks_1", "blocks_2")
    x, t, context, pooled = inputs(height=8, width=6, tokens=7, seed=3)
    err = max_rel_err(run(ours, x, t, context, pooled), run_ref(model, x, t, context, pooled))
    assert err <= RTOL, err


def test_diffusers_folder_errors(tmp_path):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "sd3"
    diffusers_model(folder, qk_norm="rms_norm")
    config = json.loads((folder / "config.json").read_text())
    weights = next(folder.glob("*.safetensors"))
    sd = load_file(str(weights))

    (folder / "config.json").write_text(json.dumps({**config, "qk_norm": "layer_norm"}))
    with pytest.raises(WeightError, match="qk_norm"):
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "use_pos_embed": False}))
    with pytest.warns(UserWarning, match="'use_pos_embed'.*ignored"):  # not a diffusers field: ignored there too
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="architecture"):
        unigen.from_pretrained(str(folder), num_layers=2)

    save_file({**sd, "pos_embed.pos_embed": sd["pos_embed.pos_embed"] + 0.01}, str(weights))
    with pytest.raises(WeightError, match="pos_embed.pos_embed"):
        unigen.from_pretrained(str(folder))
    save_file({**sd, "transformer_blocks.0.attn2.to_q.weight": np.zeros((16, 16), np.float32)}, str(weights))
    with pytest.raises(WeightError, match="unknown keys.*attn2"):
        unigen.from_pretrained(str(folder))


# ---------------------------------------------------------------- without torch
def tiny_model(seed=0, **overrides) -> MMDiT:
    """A tiny MMDiT with every parameter random (adaLN-Zero would make the blocks identities),
    built abstractly and filled from numpy (eager initialisation compiles op by op)."""
    cfg = MMDiTConfig(**{**TINY, **SD35, **overrides})
    abstract = nnx.eval_shape(lambda: MMDiT(cfg, rngs=nnx.Rngs(0)))
    rs = np.random.RandomState(seed)
    flat = {".".join(map(str, path)): (0.1 * rs.randn(*var.shape)).astype(np.float32)
            for path, var in nnx.to_flat_state(nnx.state(abstract))}
    return build_filled(MMDiT, cfg, flat, "test")


def with_cfg(model: MMDiT, **runtime) -> MMDiT:
    """The same weights under other runtime options (e.g. scan_layers), via the flat layout."""
    kind = get_model_kind("mmdit")
    flat = module_to_flat(model, kind.stacked(model.cfg))
    return build_filled(MMDiT, dataclasses.replace(model.cfg, **runtime), flat, "test")


@pytest.fixture(scope="module")
def reference():
    """A tiny SD3.5-style model (dual layer 0, rms qk-norm; runs: dual, plain, pre-only), inputs
    and its output with the loop layout and the default backend."""
    model, args = tiny_model(), inputs()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda *a: nnx.merge(graphdef, state)(*a))
    return model, args, np.asarray(forward(*args)), forward


def test_scan_remat_and_forward_mode_ad(reference):
    model, (x, t, context, pooled), expected, forward = reference
    scanned = with_cfg(model, scan_layers=True, remat=True)
    assert [k for k in vars(scanned) if k.startswith("blocks_")] == ["blocks_0", "blocks_1", "blocks_2"]
    assert scanned.blocks_0.x_ada.kernel.shape == (1, 16, 9, 16)       # dual block: 9 modulations
    assert scanned.blocks_2.ctx_ada.kernel.shape == (1, 16, 2, 16)     # pre-only: (scale, shift)
    assert scanned.blocks_2.ctx_attn.proj is None and scanned.blocks_2.ctx_mlp is None
    # jax.jvp through the scanned, rematerialised model: its primal output is the loop's output,
    # its tangent the loop model's central difference.
    graphdef, state = nnx.split(scanned)
    args = tuple(jnp.asarray(a) for a in (t, context, pooled))
    dx = np.random.RandomState(1).randn(*x.shape).astype(np.float32)
    out, tangent = jax.jit(lambda s, x, dx: jax.jvp(lambda x: nnx.merge(graphdef, s)(x, *args), (x,), (dx,)))(
        state, jnp.asarray(x), jnp.asarray(dx))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    eps = 1e-2
    central = (forward(x + eps * dx, *args) - forward(x - eps * dx, *args)) / (2 * eps)
    assert max_rel_err(tangent, central) < 1e-2


def test_block_sparse_backend(reference):
    model, args, expected, _ = reference           # 3 x 5 image tokens + 5 context tokens
    full = np.ones((1, 1, 3, 3), bool)          # the joint [image; context] sequence in blocks of 8
    sparse = with_cfg(model, attention_backend="block_sparse",
                      attention_options=(("block_mask", full), ("block_size", 8)))
    np.testing.assert_allclose(run(sparse, *args), expected, atol=1e-5)


def test_linear_backend(reference):
    model, args, expected, _ = reference
    out = run(with_cfg(model, attention_backend="linear"), *args)
    assert out.shape == expected.shape and np.isfinite(out).all()


def test_unigen_format_round_trip(tmp_path):
    model = tiny_model(scan_layers=True, dual_attention_layers=(0, 1), num_layers=4)  # runs of 2, 1, 1
    unigen.save_pretrained(model, str(tmp_path / "m"))
    kind = get_model_kind("mmdit")
    saved = module_to_flat(model, kind.stacked(model.cfg))
    assert "blocks_0.1.x_attn2.q_norm.scale" in saved and "blocks_2.0.ctx_ada.kernel" in saved
    for scan in (False, True):
        loaded = unigen.from_pretrained(str(tmp_path / "m"), scan_layers=scan)
        assert loaded.cfg.dual_attention_layers == (0, 1) and loaded.cfg.scan_layers == scan
        flat = module_to_flat(loaded, kind.stacked(loaded.cfg))
        assert flat.keys() == saved.keys()
        for k in saved:
            np.testing.assert_array_equal(flat[k], saved[k], err_msg=k)


def test_bad_inputs_name_the_problem(reference):
    model, (x, t, context, pooled), _, _ = reference
    with pytest.raises(ValueError, match="not divisible by patch size 2"):
        run(model, x[:, :5], t, context, pooled)
    with pytest.raises(ValueError, match="pos_embed_max_size=10"):
        run(model, np.zeros((2, 22, 4, 4), np.float32), t, context, pooled)
    with pytest.raises(ValueError, match="joint_attention_dim=12"):
        run(model, x, t, context[..., :8], pooled)
    with pytest.raises(ValueError, match="pooled_projection_dim=10"):
        run(model, x, t, context, pooled[:, :3])


def test_config_errors_and_run_config():
    from types import SimpleNamespace
    with pytest.raises(ValueError, match="caption_projection_dim.*16"):
        MMDiTConfig(**{**TINY, "caption_projection_dim": 12}).validate()
    with pytest.raises(ValueError, match="dual_attention_layers"):
        MMDiTConfig(**{**TINY, "dual_attention_layers": (3,)}).validate()
    with pytest.raises(ValueError, match="block_mask"):
        MMDiTConfig(**{**TINY, "attention_backend": "block_sparse"}).validate()
    kind = get_model_kind("mmdit")
    run_cfg = SimpleNamespace(model={"kind": "mmdit", "num_layers": 2, "attention_head_dim": 8,
                                     "num_attention_heads": 2, "caption_projection_dim": 16,
                                     "dual_attention_layers": [0], "pos_embed_max_size": None},
                              data=SimpleNamespace(image_size=8, channels=1, num_classes=0),
                              train=SimpleNamespace(compute_dtype="bfloat16"))
    cfg = kind.config_for(run_cfg)
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels, cfg.dtype) == (8, 1, 1, "bfloat16")
    assert cfg.dual_attention_layers == (0,) and cfg.pos_embed_max_size is None and cfg.qk_norm is None
    run_cfg.model["depth"] = 3
    with pytest.raises(ValueError, match="config.model.depth"):
        kind.config_for(run_cfg)
    conds = kind.conditions(cfg)
    assert set(conds) == {"context", "pooled"} and {c.group for c in conds.values()} == {"text"}
