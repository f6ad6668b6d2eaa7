"""KL autoencoder (SD / SD3 / Flux VAE): parity with diffusers `AutoencoderKL`, loading, errors.

The parity tests need torch + diffusers (imported inside each test); the rest runs without them.
Tiny models: an SD-style one (3 levels (16, 32, 32), 2 resnets a level, 4 latent channels, quant
convs) and an SD3-style one (2 levels (32, 64), 1 resnet, 16 latent channels, no quant convs,
shift 0.0609), on non-square 24 x 16 images.
"""

import dataclasses
import json
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.convert.unigen_format import module_to_flat
from unigen.convert.weights import fill_module
from unigen.errors import ConfigError, WeightError
from unigen.models import get_model_kind
from unigen.tokenizers import AutoencoderKL, AutoencoderKLConfig, denormalize_latents, normalize_latents

RTOL = 1e-4
SD = dict(block_out_channels=(16, 32, 32), layers_per_block=2, latent_channels=4, norm_num_groups=8,
          scaling_factor=0.18215)
SD3 = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=16,
           use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def images(batch=2, height=24, width=16, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (batch, height, width, 3)).astype(np.float32)


def run(model, x, z):
    """(mean, logvar, decode(z)) as the library runs it: split once, merged inside one jit."""
    graphdef, state = nnx.split(model)

    def fn(state, x, z):
        m = nnx.merge(graphdef, state)
        return (*m.encode(x), m.decode(z))
    return [np.asarray(a) for a in jax.jit(fn)(state, jnp.asarray(x), jnp.asarray(z))]


# ---------------------------------------------------------------- parity with diffusers
def diffusers_vae(folder, seed=0, **config):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    levels = len(config["block_out_channels"])
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                                    up_block_types=("UpDecoderBlock2D",) * levels, sample_size=32, **config)
    with torch.no_grad():  # GroupNorms away from (1, 0), so a misplaced scale or bias shows
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
    model.eval()
    model.save_pretrained(str(folder))
    return model


def run_ref(model, x, z):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        post = model.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
        out = model.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample
    return [a.permute(0, 2, 3, 1).numpy() for a in (post.mean, post.logvar, out)]


@pytest.mark.parametrize("config", [SD, SD3], ids=["sd", "sd3"])
def test_diffusers_parity(tmp_path, config):
    pytest.importorskip("torch")
    ref = diffusers_vae(tmp_path / "vae", seed=1, **config)
    ours = unigen.from_pretrained(str(tmp_path / "vae"))
    assert isinstance(ours, AutoencoderKL)
    cfg = ours.cfg
    assert (cfg.scaling_factor, cfg.shift_factor) == (config["scaling_factor"], config.get("shift_factor", 0.0))
    assert (ours.quant_conv is None) == (not config.get("use_quant_conv", True))
    assert ours.encoder.conv_out.kernel.shape == (3, 3, config["block_out_channels"][-1], 2 * cfg.latent_channels)
    x = images()
    z = np.random.RandomState(2).randn(2, *ours.latent_shape(24, 16)).astype(np.float32)
    for name, a, b in zip(("mean", "logvar", "decode"), run(ours, x, z), run_ref(ref, x, z)):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        err = max_rel_err(a, b)
        assert err <= RTOL, (name, err)


def test_pipeline_folder_and_old_attention_names(tmp_path):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file, save_file
    diffusers_vae(tmp_path / "pipe" / "vae", **SD3)
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    expected = module_to_flat(unigen.from_pretrained(str(tmp_path / "pipe"), subfolder="vae"))
    whole = unigen.from_pretrained(str(tmp_path / "pipe"))  # the one readable component
    assert isinstance(whole, AutoencoderKL)
    # the pre-0.14 attention names (query/key/value/proj_attn) read into the same parameters
    weights = next((tmp_path / "pipe" / "vae").glob("*.safetensors"))
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in load_file(str(weights)).items():
        for new, name in old.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{name}.")
        sd[k] = v
    save_file(sd, str(weights))
    for flat in (module_to_flat(whole), module_to_flat(unigen.from_pretrained(str(tmp_path / "pipe" / "vae")))):
        assert flat.keys() == expected.keys()
        for k in expected:
            np.testing.assert_array_equal(flat[k], expected[k], err_msg=k)


def test_diffusers_folder_errors(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import unigen.convert.autoencoder_kl as converter
    folder = tmp_path / "vae"
    diffusers_vae(folder, **SD3)
    config = json.loads((folder / "config.json").read_text())

    def build_filled_never(*args, **kwargs):
        raise AssertionError("a mismatched folder must fail before the model is built")
    monkeypatch.setattr(converter, "build_filled", build_filled_never)

    def fails(match, error=WeightError, **changes):
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(error, match=match) as info:
            unigen.from_pretrained(str(folder))
        return str(info.value)

    msg = fails(r"'encoder\.conv_out\.weight' has shape \(32, 64, 3, 3\).*implies \(8, 64, 3, 3\)", latent_channels=4)
    assert "latent_channels=4" in msg and "config.json" in msg
    msg = fails(r"'encoder\.conv_in\.weight' has shape \(32, 3, 3, 3\).*implies \(32, 4, 3, 3\)", in_channels=4)
    assert "in_channels=4" in msg
    fails(r"'encoder\.down_blocks\.0\.resnets\.1\.norm1\.weight' is missing.*layers_per_block", layers_per_block=2)
    fails(r"'quant_conv\.weight' is missing.*use_quant_conv", use_quant_conv=True)  # the weights have none
    fails(r"unknown keys.*attentions.*mid_block_add_attention", mid_block_add_attention=False)
    fails("act_fn", act_fn="relu")
    fails("latents_mean", latents_mean=[0.0] * 16)
    fails("up_block_types", up_block_types=["UpDecoderBlock2D"])
    fails("norm_num_groups", norm_num_groups=24)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="architecture"):
        unigen.from_pretrained(str(folder), latent_channels=4)
    monkeypatch.undo()  # a field AutoencoderKL does not have (diffusers ignores it) loads, with a warning
    (folder / "config.json").write_text(json.dumps({**config, "norm_type": "spatial"}))
    with pytest.warns(UserWarning, match="'norm_type'.*ignored"):
        unigen.from_pretrained(str(folder))


# ---------------------------------------------------------------- without torch

def tiny_model(seed=0, **overrides) -> AutoencoderKL:
    """A tiny SD-style AutoencoderKL with every parameter random, built abstractly and filled
    from numpy (eager initialisation compiles op by op)."""
    cfg = AutoencoderKLConfig(**{**SD, **overrides})
    abstract = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))
    rs = np.random.RandomState(seed)
    flat = {".".join(map(str, path)): (0.1 * rs.randn(*var.shape)).astype(np.float32)
            for path, var in nnx.to_flat_state(nnx.state(abstract))}
    return fill_module(abstract, flat, source="test")


def test_unigen_format_round_trip_remat_and_sampling(tmp_path):
    model = tiny_model(block_out_channels=(16,), layers_per_block=1)  # one level: the gradient compiles fast
    unigen.save_pretrained(model, str(tmp_path / "m"))
    saved = module_to_flat(model)
    loaded = unigen.from_pretrained(str(tmp_path / "m"), remat=True)
    assert loaded.cfg == dataclasses.replace(model.cfg, remat=True) and loaded.cfg.block_out_channels == (16,)
    flat = module_to_flat(loaded)
    assert flat.keys() == saved.keys()
    for k in saved:
        np.testing.assert_array_equal(flat[k], saved[k], err_msg=k)
    # remat changes memory, not values or gradients (the decoder's: it compiles in half the time)
    z = jnp.asarray(np.random.RandomState(0).randn(1, 24, 16, 4), jnp.float32)

    def loss_and_grad(m):
        graphdef, state = nnx.split(m)
        return jax.jit(jax.value_and_grad(lambda s: jnp.mean(jnp.square(nnx.merge(graphdef, s).decode(z)))))(state)
    def rematerialised(m):
        graphdef, state = nnx.split(m)
        jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s).decode(z))(state))
        return re.search(r"\b(remat\d*|checkpoint)\[", jaxpr) is not None  # the primitive's name varies
    assert rematerialised(loaded) and not rematerialised(model)
    (l0, g0), (l1, g1) = loss_and_grad(model), loss_and_grad(loaded)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    # model(x, rng) decodes a posterior sample, model(x) the mean
    graphdef, state = nnx.split(model)
    x = jnp.asarray(images(batch=1))
    (sampled, mean, logvar), (recon, mean0, _) = jax.jit(
        lambda s, rng: (nnx.merge(graphdef, s)(x, rng), nnx.merge(graphdef, s)(x)))(state, jax.random.key(0))
    assert sampled.shape == recon.shape == x.shape and mean.shape == logvar.shape == (1, 24, 16, 4)
    np.testing.assert_array_equal(mean, mean0)
    assert np.abs(np.asarray(sampled) - np.asarray(recon)).max() > 1e-3
    assert float(logvar.min()) >= -30.0 and float(logvar.max()) <= 20.0
    assert model.downsample_factor == 1 and model.latent_shape(24, 16) == (24, 16, 4)
    z = jnp.asarray(np.random.RandomState(0).randn(3, 6, 4, 4), jnp.float32)
    np.testing.assert_allclose(denormalize_latents(normalize_latents(z, model), model.cfg), z, atol=1e-6)
    np.testing.assert_allclose(normalize_latents(z, model), z * 0.18215, atol=1e-7)


def test_config_input_and_run_config_errors():
    with pytest.raises(ValueError, match=r"AutoencoderKLConfig\.norm_num_groups=32: must divide.*\(32, 48\)"):
        AutoencoderKLConfig(block_out_channels=(32, 48)).validate()
    with pytest.raises(ValueError, match=r"AutoencoderKLConfig\.block_out_channels=\[32\]"):
        AutoencoderKLConfig(block_out_channels=[32]).validate()
    with pytest.raises(ValueError, match=r"AutoencoderKLConfig\.dtype='float64'"):
        AutoencoderKLConfig(dtype="float64").validate()
    with pytest.raises(ValueError, match=r"AutoencoderKLConfig\.scaling_factor=0"):
        AutoencoderKLConfig(scaling_factor=0).validate()
    model = tiny_model()
    assert model.downsample_factor == 4 and model.latent_shape(24, 16) == (6, 4, 4)
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsample factor 4"):
        model.encode(np.zeros((1, 22, 16, 3), np.float32))
    with pytest.raises(ValueError, match="C=3"):
        model.encode(np.zeros((1, 24, 16, 4), np.float32))
    with pytest.raises(ValueError, match="C=4"):
        model.decode(np.zeros((1, 6, 4, 16), np.float32))

    kind = get_model_kind("autoencoder_kl")
    assert kind.runtime_fields == ("dtype", "remat")
    run_cfg = SimpleNamespace(model={"kind": "autoencoder_kl", "block_out_channels": [16, 32], "norm_num_groups": 8,
                                     "layers_per_block": 1, "shift_factor": None},
                              data=SimpleNamespace(image_size=16, channels=1, num_classes=0),
                              train=SimpleNamespace(compute_dtype="bfloat16"))
    cfg = kind.config_for(run_cfg)
    assert (cfg.in_channels, cfg.out_channels, cfg.sample_size, cfg.dtype) == (1, 1, 16, "bfloat16")
    assert cfg.block_out_channels == (16, 32) and cfg.shift_factor == 0.0
    for field, value, match in (("depth", 3, r"config\.model\.depth=3: not an AutoencoderKL field"),
                                ("latent_channels", 0, r"config\.model\.latent_channels=0: must be a positive"),
                                ("in_channels", 3, r"config\.model\.in_channels=3: the data set's images have 1")):
        bad = SimpleNamespace(**{**vars(run_cfg), "model": {**run_cfg.model, field: value}})
        with pytest.raises(ValueError, match=match):
            kind.config_for(bad)
