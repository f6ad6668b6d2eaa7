"""Flux.1: parity with diffusers `FluxTransformer2DModel`, the released configs, packing, scan, errors.

The parity tests need torch + diffusers (imported inside each test); the rest runs without them.
The released FLUX.1-dev / FLUX.1-schnell config.json files (tests/released_configs/) load shrunk in
their size fields only: width 2 heads x 16 (RoPE axes 4 / 6 / 6), 2 double + 2 single blocks,
12-wide text states, a 10-wide pooled vector; the packed 64 channels stay. Latents are non-square,
6 x 10 x 16, packed to a 3 x 5 grid of 15 tokens; 5 text tokens.
"""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
import unigen.convert.flux as flux_convert  # registers the diffusers FluxTransformer2DModel loader
from unigen.convert.unigen_format import build_filled, module_to_flat
from unigen.errors import ConfigError, WeightError
from unigen.models.flux import Flux, FluxConfig, latent_image_ids, pack_latents, stacked, text_ids, unpack_latents

RTOL = 1e-4
RELEASED_DIR = pathlib.Path(__file__).parent / "released_configs"
DEV, SCHNELL = "black-forest-labs_FLUX.1-dev.transformer", "black-forest-labs_FLUX.1-schnell.transformer"
RELEASED = {name: json.loads((RELEASED_DIR / f"{name}.json").read_text())["config"] for name in (DEV, SCHNELL)}
SHRINK = dict(num_layers=2, num_single_layers=2, num_attention_heads=2, attention_head_dim=16,
              joint_attention_dim=12, pooled_projection_dim=10, axes_dims_rope=[4, 6, 6])
TINY = dict(in_channels=64, **{**SHRINK, "axes_dims_rope": (4, 6, 6)})


def shrunk(name: str, **more) -> dict:
    return {**RELEASED[name], **SHRINK, **more}


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def inputs(*, guidance: bool, channels: int = 16, batch: int = 2, height: int = 6, width: int = 10, tokens: int = 5,
           seed: int = 0) -> dict:
    """Model inputs as numpy: packed latents, T5-like states, pooled vector, sigma, ids, guidance.
    Text ids are random small integers rather than the pipelines' zeros, so RoPE on text is tested."""
    rs = np.random.RandomState(seed)
    latents = rs.randn(batch, height, width, channels).astype(np.float32)
    return dict(hidden_states=np.asarray(pack_latents(jnp.asarray(latents))),
                encoder_hidden_states=rs.randn(batch, tokens, 12).astype(np.float32),
                pooled_projections=rs.randn(batch, 10).astype(np.float32),
                timestep=rs.uniform(0, 1, batch).astype(np.float32),
                img_ids=latent_image_ids(height // 2, width // 2),
                txt_ids=rs.randint(0, 7, (tokens, 3)).astype(np.float32),
                guidance=rs.uniform(1, 5, batch).astype(np.float32) if guidance else None)


def jitted(model):
    """The model as the library runs it: split once, merged inside one jit."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, args: nnx.merge(graphdef, state)(**args)), state


def run(model, args):
    fn, state = jitted(model)
    return np.asarray(fn(state, {k: None if v is None else jnp.asarray(v) for k, v in args.items()}))


# ---------------------------------------------------------------- parity with diffusers
def randomize(model, seed):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    with torch.no_grad():  # every parameter random: adaLN-Zero, unit RMSNorm weights and zero biases
        for p in model.parameters():  # would hide swapped or misplaced weights
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def diffusers_folder(folder: pathlib.Path, config: dict, seed: int = 0):
    """diffusers' model built from `config`, random, saved with save_pretrained; config.json then
    rewritten as given (as released, not as re-saved)."""
    diffusers = pytest.importorskip("diffusers")
    model = randomize(diffusers.FluxTransformer2DModel.from_config(config), seed)
    model.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return model


def run_ref(model, args):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        args = {k: None if v is None else torch.from_numpy(np.array(v)) for k, v in args.items()}
        return model(**args).sample.numpy()


@pytest.mark.parametrize("name", [DEV, SCHNELL], ids=["dev", "schnell"])
def test_shrunk_release_matches_diffusers(tmp_path, name):
    pytest.importorskip("torch")
    config = shrunk(name)
    model = diffusers_folder(tmp_path / "flux", config, seed=1)
    ours = unigen.from_pretrained(str(tmp_path / "flux"))
    assert isinstance(ours, Flux) and ours.cfg.guidance_embeds == RELEASED[name]["guidance_embeds"]
    assert (ours.guidance_embedder is not None) == ours.cfg.guidance_embeds
    assert ours.cfg.out_channels == 64 and ours.cfg.axes_dims_rope == (4, 6, 6)
    args = inputs(guidance=ours.cfg.guidance_embeds)
    err = max_rel_err(run(ours, args), run_ref(model, args))
    assert err <= RTOL, err


def test_pipeline_folder_scanned_with_explicit_rope_axes_and_out_channels(tmp_path):
    """A later-style config (axes_dims_rope and out_channels written out, out != in) inside a pipeline
    folder, loaded with scan_layers and remat: the same numbers as diffusers."""
    pytest.importorskip("torch")
    config = shrunk(DEV, axes_dims_rope=[2, 8, 6], out_channels=8)
    model = diffusers_folder(tmp_path / "pipe" / "transformer", config, seed=2)
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    ours = unigen.from_pretrained(str(tmp_path / "pipe"), subfolder="transformer", scan_layers=True, remat=True)
    assert ours.cfg.scan_layers and ours.cfg.out_channels == 8 and ours.cfg.axes_dims_rope == (2, 8, 6)
    assert ours.double_blocks.x_ada.kernel.shape == (2, 32, 6, 32)
    assert ours.single_blocks.attn_out.kernel.shape == (2, 2, 16, 32)
    args = inputs(guidance=True, height=8, width=4, tokens=7, seed=3)
    out = run(ours, args)
    assert out.shape == (2, 8, 8)
    err = max_rel_err(out, run_ref(model, args))
    assert err <= RTOL, err


def test_pack_unpack_and_image_ids_match_diffusers():
    torch = pytest.importorskip("torch")
    from diffusers import FluxPipeline
    latents = np.random.RandomState(0).randn(2, 6, 10, 16).astype(np.float32)  # NHWC
    nchw = torch.from_numpy(latents).permute(0, 3, 1, 2)
    theirs = FluxPipeline._pack_latents(nchw, 2, 16, 6, 10).numpy()
    packed = np.asarray(pack_latents(jnp.asarray(latents)))
    np.testing.assert_array_equal(packed, theirs)
    # diffusers unpacks from pixel sides and the VAE factor: 48 x 80 pixels at 8x -> a 6 x 10 latent
    back = FluxPipeline._unpack_latents(torch.from_numpy(packed.copy()), 48, 80, 8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(unpack_latents(jnp.asarray(packed), 6, 10)), back)
    np.testing.assert_array_equal(back, latents)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32).numpy()
    np.testing.assert_array_equal(latent_image_ids(3, 5), ids)
    np.testing.assert_array_equal(text_ids(4), np.zeros((4, 3), np.float32))


# ---------------------------------------------------------------- the released configs, full size
@pytest.mark.parametrize("name", [DEV, SCHNELL], ids=["dev", "schnell"])
def test_full_size_release_builds_with_the_reference_parameter_count(name):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        expected = sum(p.numel() for p in diffusers.FluxTransformer2DModel.from_config(RELEASED[name]).parameters())
    cfg = flux_convert.diffusers_config(RELEASED[name], scan_layers=True)  # scanned: traced once per run
    assert (cfg.num_layers, cfg.num_single_layers, cfg.hidden_size, cfg.axes_dims_rope, cfg.out_channels) == (
        19, 38, 3072, (16, 56, 56), 64)
    abstract = nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0)))
    got = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    assert got == expected, (got, expected)  # FLUX.1-dev: 11,901,408,320


def test_config_fields_read_as_diffusers_reads_them():
    """Fields diffusers fills by default read the same written out; unknown ones warn and are ignored;
    a value unigen cannot honour is refused by name."""
    base = flux_convert.diffusers_config(RELEASED[DEV])
    written_out = {**RELEASED[DEV], "axes_dims_rope": [16, 56, 56], "out_channels": None}  # diffusers 0.34 re-saves
    assert flux_convert.diffusers_config(written_out) == base
    with pytest.warns(UserWarning, match="'is_tp'.*ignored"):
        assert flux_convert.diffusers_config({**RELEASED[DEV], "is_tp": True}) == base
    with pytest.raises(WeightError, match="'axes_dims_rope'.*sum to attention_head_dim=128"):
        flux_convert.diffusers_config({**RELEASED[DEV], "axes_dims_rope": [16, 56, 64]})
    with pytest.raises(WeightError, match="'guidance_embeds'.*wrong type"):
        flux_convert.diffusers_config({**RELEASED[DEV], "guidance_embeds": "yes"})
    with pytest.raises(ConfigError, match="overrides"):
        flux_convert.diffusers_config(RELEASED[DEV], attention_backend="nope")


def test_folder_errors_name_the_problem(tmp_path):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "flux"
    diffusers_folder(folder, shrunk(SCHNELL))
    weights = next(folder.glob("*.safetensors"))
    sd = load_file(str(weights))
    config = json.loads((folder / "config.json").read_text())

    with pytest.raises(ConfigError, match="architecture"):
        unigen.from_pretrained(str(folder), num_single_layers=1)
    (folder / "config.json").write_text(json.dumps({**config, "axes_dims_rope": [4, 4, 4]}))
    with pytest.raises(WeightError, match="'axes_dims_rope'"):
        unigen.from_pretrained(str(folder))
    # dev's config on schnell's weights: the guidance embedder's keys are missing, by name
    (folder / "config.json").write_text(json.dumps({**config, "guidance_embeds": True}))
    with pytest.raises(WeightError, match="missing key 'time_text_embed.guidance_embedder.linear_1.weight'"):
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    key = "single_transformer_blocks.1.proj_mlp.bias"
    save_file({k: v for k, v in sd.items() if k != key}, str(weights))
    with pytest.raises(WeightError, match=f"missing key '{key}'"):
        unigen.from_pretrained(str(folder))
    save_file({**sd, "single_transformer_blocks.2.proj_mlp.bias": sd[key]}, str(weights))
    with pytest.raises(WeightError, match="unknown keys.*single_transformer_blocks.2"):
        unigen.from_pretrained(str(folder))


# ---------------------------------------------------------------- without torch
def tiny_model(seed=0, **overrides) -> Flux:
    """A tiny Flux with every parameter random (adaLN-Zero would make the blocks identities),
    built abstractly and filled from numpy."""
    cfg = FluxConfig(**{**TINY, "guidance_embeds": True, **overrides})
    abstract = nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0)))
    rs = np.random.RandomState(seed)
    flat = {".".join(map(str, path)): (0.1 * rs.randn(*var.shape)).astype(np.float32)
            for path, var in nnx.to_flat_state(nnx.state(abstract))}
    return build_filled(Flux, cfg, flat, "test")


def with_cfg(model: Flux, **runtime) -> Flux:
    """The same weights under other runtime options (e.g. scan_layers), via the flat layout."""
    flat = module_to_flat(model, stacked(model.cfg))
    return build_filled(Flux, dataclasses.replace(model.cfg, **runtime), flat, "test")


@pytest.fixture(scope="module")
def reference():
    """A tiny dev-like model, inputs, its jitted forward (loop layout) and its output."""
    model, args = tiny_model(), inputs(guidance=True)
    forward, state = jitted(model)
    return model, args, np.asarray(forward(state, {k: jnp.asarray(v) for k, v in args.items()})), (forward, state)


def test_scan_remat_and_forward_mode_ad(reference):
    model, args, expected, (forward, loop_state) = reference
    scanned = with_cfg(model, scan_layers=True, remat=True)
    assert scanned.double_blocks.ctx_ada.kernel.shape == (2, 32, 6, 32)
    assert scanned.single_blocks.mlp_out.kernel.shape == (2, 128, 32)
    flat, scanned_flat = module_to_flat(model), module_to_flat(scanned, stacked(scanned.cfg))
    assert flat.keys() == scanned_flat.keys() and "single_blocks.1.attn.q_norm.scale" in flat
    for k in flat:
        np.testing.assert_array_equal(flat[k], scanned_flat[k], err_msg=k)
    # jax.jvp through the scanned, rematerialised model: its primal output is the loop's output, its
    # tangent the loop model's central difference
    graphdef, state = nnx.split(scanned)
    rest = {k: jnp.asarray(v) for k, v in args.items() if k != "hidden_states"}
    x = jnp.asarray(args["hidden_states"])
    dx = jnp.asarray(np.random.RandomState(1).randn(*x.shape).astype(np.float32))
    out, tangent = jax.jit(lambda s, x, dx: jax.jvp(lambda x: nnx.merge(graphdef, s)(x, **rest), (x,), (dx,)))(
        state, x, dx)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    eps = 1e-2
    central = (forward(loop_state, {**rest, "hidden_states": x + eps * dx})
               - forward(loop_state, {**rest, "hidden_states": x - eps * dx})) / (2 * eps)
    assert max_rel_err(tangent, central) < 1e-2


def test_bad_inputs_name_the_problem(reference):
    model, args, _, _ = reference
    latents = np.zeros((2, 6, 10, 16), np.float32)
    with pytest.raises(ValueError, match=r"packed latent tokens.*pack_latents"):
        run(model, {**args, "hidden_states": latents})
    with pytest.raises(ValueError, match="must be even"):
        pack_latents(jnp.asarray(latents[:, :5]))
    with pytest.raises(ValueError, match=r"img_ids must be \(15, 3\)"):
        run(model, {**args, "img_ids": latent_image_ids(5, 3)[:12]})
    with pytest.raises(ValueError, match=r"txt_ids must be \(5, 3\).*ids\[0\]"):
        run(model, {**args, "txt_ids": np.zeros((2, 5, 3), np.float32)})
    with pytest.raises(ValueError, match="joint_attention_dim=12"):
        run(model, {**args, "encoder_hidden_states": args["encoder_hidden_states"][..., :8]})
    with pytest.raises(ValueError, match="guidance_embeds=True.*pass guidance"):
        run(model, {**args, "guidance": None})
    schnell = tiny_model(guidance_embeds=False)
    with pytest.raises(ValueError, match="guidance_embeds=False.*guidance=None"):
        run(schnell, args)


def test_config_validation_names_field_and_fix():
    with pytest.raises(ValueError, match=r"axes_dims_rope.*sum to attention_head_dim=16"):
        FluxConfig(**{**TINY, "axes_dims_rope": (4, 4, 4)}).validate()
    with pytest.raises(ValueError, match="axes_dims_rope.*even"):
        FluxConfig(**{**TINY, "axes_dims_rope": (5, 5, 6)}).validate()
    with pytest.raises(ValueError, match="num_single_layers"):
        FluxConfig(**{**TINY, "num_single_layers": 0}).validate()
    with pytest.raises(ValueError, match="block_mask"):
        FluxConfig(**{**TINY, "attention_backend": "block_sparse"}).validate()
    with pytest.raises(ValueError, match="guidance_embeds"):
        FluxConfig(**{**TINY, "guidance_embeds": 1}).validate()
