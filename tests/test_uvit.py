"""U-ViT (UniDiffuser): parity with diffusers `UniDiffuserModel`, loading, scan, errors, gradients.

The parity tests need torch + diffusers (imported inside each test); the rest runs without them.
Tiny models: width 32 (2 heads x 16), sample_size 8 / patch 2 (16 patches), 5 text tokens of
width 8, a CLIP image embedding of width 12; every parameter random (LayerNorm weights, position
tables and the data-type table included) so that a misplaced weight shows.
"""

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.convert.unigen_format import build_filled, module_to_flat
from unigen.errors import ConfigError, WeightError
from unigen.models import InputSpec, UViT, UViTConfig, get_model_kind
from unigen.models.uvit import Block

RTOL = 1e-4
TINY = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, text_dim=8, clip_img_dim=12,
            num_text_tokens=5, num_layers=5, num_attention_heads=2, attention_head_dim=16)


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def inputs(batch=2, seed=0, data_type=False):
    """img NHWC, clip_img (B, 1, 12), text (B, 5, 8), per-example float timesteps (B,)."""
    rs = np.random.RandomState(seed)
    return dict(img=rs.randn(batch, 8, 8, 4).astype(np.float32), clip_img=rs.randn(batch, 1, 12).astype(np.float32),
                text=rs.randn(batch, 5, 8).astype(np.float32),
                t_img=rs.uniform(0, 1000, batch).astype(np.float32),
                t_text=rs.uniform(0, 1000, batch).astype(np.float32),
                data_type=(np.arange(batch) % 2).astype(np.int32) if data_type else None)


def run(model, args):
    """The model's outputs as the library runs it: split once, merged inside one jit."""
    graphdef, state = nnx.split(model)
    names = [k for k, v in args.items() if v is not None]
    fn = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(**dict(zip(names, a))))
    return tuple(np.asarray(o) for o in fn(state, *(jnp.asarray(args[k]) for k in names)))


# ---------------------------------------------------------------- parity with diffusers
def diffusers_model(folder, seed=0, **overrides):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.pipelines.deprecated.unidiffuser.modeling_uvit import UniDiffuserModel
    torch.manual_seed(seed)
    model = UniDiffuserModel(**{**TINY, **overrides})
    with torch.no_grad():  # every parameter random: default LayerNorms (1, 0) and zero biases would
        for p in model.parameters():  # hide swapped or misplaced weights
            p.copy_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(str(folder))
    return model


def run_ref(model, args):
    """diffusers' outputs, NHWC; timesteps and data_type as tensors, or as Python scalars."""
    torch = pytest.importorskip("torch")

    def arg(a):
        return torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a
    with torch.no_grad():
        img, clip_img, text = model(torch.from_numpy(args["img"]).permute(0, 3, 1, 2), arg(args["clip_img"]),
                                    arg(args["text"]), arg(args["t_img"]), arg(args["t_text"]),
                                    data_type=arg(args["data_type"]))
    return img.permute(0, 2, 3, 1).numpy(), clip_img.numpy(), text.numpy()


def check_parity(ours, model, args):
    errs = [max_rel_err(a, b) for a, b in zip(run(ours, args), run_ref(model, args))]
    assert max(errs) <= RTOL, errs
    return errs


VARIANTS = {
    "post_ln_geglu_odd": {},
    "v1_data_type_gelu_even": dict(use_data_type_embedding=True, activation_fn="gelu", num_layers=4),
    "pre_ln_gelu_tanh_qkv_bias": dict(pre_layer_norm=True, activation_fn="gelu-approximate", attention_bias=True),
    "standard_post_ln_time_mlp_patch_pos": dict(block_type="standard", use_timestep_embedding=True,
                                                use_patch_pos_embed=True),
    "standard_pre_ln_no_affine": dict(block_type="standard", pre_layer_norm=True, norm_elementwise_affine=False,
                                      activation_fn="gelu", num_layers=2),
}
SCALAR_TIMESTEPS = ("post_ln_geglu_odd", "v1_data_type_gelu_even")


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_diffusers_parity(tmp_path, variant):
    pytest.importorskip("torch")
    overrides = VARIANTS[variant]
    model = diffusers_model(tmp_path / "uvit", seed=1, **overrides)
    ours = unigen.from_pretrained(str(tmp_path / "uvit"))
    assert isinstance(ours, UViT)
    for key, value in overrides.items():
        assert getattr(ours.cfg, key) == value, key
    data_type = ours.cfg.use_data_type_embedding
    errs = check_parity(ours, model, inputs(data_type=data_type))  # per-example (B,) timesteps
    print(f"{variant}: max relative errors (img, clip_img, text) {errs}")
    if variant in SCALAR_TIMESTEPS:  # scalar int timesteps (and data_type), as diffusers' pipeline passes them
        scalars = {**inputs(seed=1), "t_img": 0, "t_text": 1000, "data_type": 1 if data_type else None}
        print(f"{variant}, scalar timesteps: {check_parity(ours, model, scalars)}")


def test_pipeline_folder_scanned_and_rank2_clip(tmp_path):
    """A pipeline folder with the network in `unet/` loads (here scanned); a (B, clip_img_dim)
    CLIP input gives a (B, clip_img_dim) output."""
    pytest.importorskip("torch")
    model = diffusers_model(tmp_path / "pipe" / "unet", seed=2, use_data_type_embedding=True)
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "UniDiffuserPipeline"}))
    ours = unigen.from_pretrained(str(tmp_path / "pipe"), scan_layers=True)
    assert ours.cfg.scan_layers and get_model_kind("uvit").stacked(ours.cfg) == ("in_blocks", "out_blocks")
    assert ours.in_blocks.qkv.kernel.shape == (2, 32, 3, 2, 16)
    args = inputs(batch=3, seed=3, data_type=True)
    errs = check_parity(ours, model, args)
    print("pipeline folder, scanned: max relative errors (img, clip_img, text)", errs)
    img, clip_img, text = run(ours, {**args, "clip_img": args["clip_img"][:, 0]})
    assert clip_img.shape == (3, 12)
    np.testing.assert_allclose(clip_img, run_ref(model, args)[1][:, 0], rtol=0, atol=RTOL * 10)


def test_diffusers_config_errors(tmp_path):
    pytest.importorskip("torch")
    folder = tmp_path / "uvit"
    diffusers_model(folder, num_layers=2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 16}))
    with pytest.raises(WeightError, match="'cross_attention_dim' = 16.*no cross-attention"):
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "norm_type": "ada_norm"}))
    with pytest.raises(WeightError, match="norm_type"):
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "activation_fn": "swiglu"}))
    with pytest.raises(WeightError, match="activation_fn"):
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="architecture"):
        unigen.from_pretrained(str(folder), num_layers=3)


# ---------------------------------------------------------------- without torch
def tiny_model(seed=0, **overrides) -> UViT:
    """A tiny UViT with every parameter random, built abstractly and filled from numpy."""
    cfg = UViTConfig(**{**TINY, **overrides})
    abstract = nnx.eval_shape(lambda: UViT(cfg, rngs=nnx.Rngs(0)))
    rs = np.random.RandomState(seed)
    flat = {".".join(map(str, path)): (0.1 * rs.randn(*var.shape)).astype(np.float32)
            for path, var in nnx.to_flat_state(nnx.state(abstract))}
    return build_filled(UViT, cfg, flat, "test")


def with_cfg(model: UViT, **runtime) -> UViT:
    """The same weights under other runtime options (e.g. scan_layers), via the flat layout."""
    flat = module_to_flat(model, get_model_kind("uvit").stacked(model.cfg))
    return build_filled(UViT, dataclasses.replace(model.cfg, **runtime), flat, "test")


def test_scan_equals_loop():
    """Even depth here; the odd default depth runs scanned in the pipeline-folder parity test."""
    model = tiny_model(num_layers=4, use_data_type_embedding=True)
    args = inputs(data_type=True)
    expected = run(model, args)
    scanned = with_cfg(model, scan_layers=True, remat=True)
    assert scanned.out_blocks.skip_linear.kernel.shape == (2, 2, 32, 32)
    for a, b in zip(run(scanned, args), expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    kind = get_model_kind("uvit")
    assert module_to_flat(scanned, kind.stacked(scanned.cfg)).keys() == module_to_flat(model).keys()


def test_bad_inputs_name_the_problem():
    model = tiny_model(num_layers=2, use_data_type_embedding=True)
    args = inputs(data_type=True)
    with pytest.raises(ValueError, match=r"clip_img has batch size 3 but img has 2"):
        run(model, {**args, "clip_img": np.zeros((3, 1, 12), np.float32)})
    with pytest.raises(ValueError, match=r"text has batch size 1 but img has 2"):
        run(model, {**args, "text": args["text"][:1]})
    with pytest.raises(ValueError, match=r"text must be \(B, num_text_tokens=5, text_dim=8\); got \(2, 4, 8\)"):
        run(model, {**args, "text": args["text"][:, :4]})
    with pytest.raises(ValueError, match=r"img must be NHWC \(B, 8, 8, 4\)"):
        run(model, {**args, "img": np.zeros((2, 4, 8, 8), np.float32)})
    with pytest.raises(ValueError, match=r"t_img must be a scalar or shaped \(2,\)"):
        run(model, {**args, "t_img": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="pass data_type"):
        run(model, {**args, "data_type": None})
    plain = tiny_model(num_layers=2)  # no data-type embedding: data_type ignored, as diffusers does
    for a, b in zip(run(plain, args), run(plain, {**args, "data_type": None})):
        np.testing.assert_array_equal(a, b)


def test_config_errors_run_config_and_stacked():
    with pytest.raises(ValueError, match="UViTConfig.sample_size=9.*patch_size=2"):
        UViTConfig(**{**TINY, "sample_size": 9}).validate()
    with pytest.raises(ValueError, match="UViTConfig.activation_fn='swiglu'"):
        UViTConfig(**{**TINY, "activation_fn": "swiglu"}).validate()
    with pytest.raises(ValueError, match="UViTConfig.block_type"):
        UViTConfig(**{**TINY, "block_type": "sandwich"}).validate()
    kind = get_model_kind("uvit")
    run_cfg = SimpleNamespace(model={"kind": "uvit", "num_layers": 3, "attention_head_dim": 8,
                                     "num_attention_heads": 2, "text_dim": 8, "clip_img_dim": 12,
                                     "num_text_tokens": 5, "scan_layers": True},
                              data=SimpleNamespace(image_size=8, channels=1, num_classes=0),
                              train=SimpleNamespace(compute_dtype="bfloat16"))
    cfg = kind.config_for(run_cfg)
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels, cfg.dtype) == (8, 1, 1, "bfloat16")
    assert kind.stacked(cfg) == ("in_blocks", "out_blocks") and kind.conditions(cfg) == {}
    assert kind.stacked(dataclasses.replace(cfg, num_layers=1)) == ()
    run_cfg.model["depth"] = 3
    with pytest.raises(ValueError, match="config.model.depth.*known"):
        kind.from_section(run_cfg.model, InputSpec.of_run(run_cfg))


def test_init_as_the_original():
    """Linear weights truncated normal with std 0.02 (timm's bounds +-2 absolute, so no visible
    truncation), biases 0, LayerNorms 1 / 0. (One block: eager initialisation compiles op by op.)"""
    block = Block(UViTConfig(**TINY), rngs=nnx.Rngs(0))
    kernel = np.asarray(block.ff.fc1.kernel[...])
    assert abs(kernel.std() - 0.02) < 2e-3 and np.abs(kernel).max() > 0.06
    np.testing.assert_array_equal(block.ff.fc1.bias[...], 0.0)
    np.testing.assert_array_equal(block.attn_norm.scale[...], 1.0)
    assert block.qkv.bias is None  # attention_bias=False


def test_xavier_init_is_glorot_over_flattened_fans():
    """init="xavier" (opt-in for small widths): each Linear kernel Glorot-uniform over its flattened
    (fan_in, fan_out), e.g. q/k/v as Linear(D, 3D); biases and LayerNorms as the reference."""
    cfg = UViTConfig(**TINY, init="xavier")
    block = Block(cfg, rngs=nnx.Rngs(0))
    d = cfg.hidden_size
    for kernel, fan_in, fan_out in ((block.qkv.kernel, d, 3 * d), (block.ff.fc1.kernel, d, 8 * d),
                                    (block.proj.kernel, d, d)):
        k = np.asarray(kernel[...])
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound, kernel
    np.testing.assert_array_equal(block.ff.fc1.bias[...], 0.0)
    with pytest.raises(ValueError, match="init"):
        UViTConfig(**TINY, init="he").validate()


def test_finite_gradients_scanned():
    """jax.grad of a UniDiffuser-style loss through a scanned, rematerialised model: finite,
    reaching every parameter (the position table, the data-type table, both stacks)."""
    model = tiny_model(num_layers=3, scan_layers=True, remat=True, use_data_type_embedding=True)
    graphdef, state = nnx.split(model)
    args = {k: jnp.asarray(v) for k, v in inputs(data_type=True).items()}

    def loss(state):
        out = nnx.merge(graphdef, state)(**args)
        return sum(jnp.mean(jnp.square(o - 0.5)) for o in out)
    grads = jax.jit(jax.grad(loss))(state)
    for path, g in nnx.to_flat_state(grads):
        g = np.asarray(g[...])
        assert np.isfinite(g).all(), path
        if path[-1] != "data_type_embed":
            assert np.abs(g).sum() > 0, path
    used = np.abs(np.asarray(grads["data_type_embed"][...])).sum(-1)
    assert (used > 0).all()  # both rows: the batch holds data types 0 and 1
