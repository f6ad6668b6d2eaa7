"""Released checkpoints load as released (docs/design.md §6): the config.json files (and the official
DiT flags) of the diffusion networks people use, kept verbatim in tests/released_configs/, each read
by `unigen.from_pretrained` exactly as the hub has it.

For each released config:
  * full size: unigen builds it (abstract shapes only) with exactly the reference's parameter count
    (torch meta device vs `nnx.eval_shape`);
  * shrunk in its size fields only (layers, heads, head dim, sample size, text dims; every other
    field as released): the reference built from it in PyTorch with every parameter random, saved
    as released (diffusers `save_pretrained` + the config.json verbatim, or a raw `.pt` state dict),
    loaded by `unigen.from_pretrained`, and compared on random inputs (float32, <= 1e-4 relative).
And field by field, the rule: a field the reference does not read (or whose value cannot change a
forward pass) does not stop a load; a field it reads whose value unigen cannot honour does, by name.
Here "reads" is shown, not assumed: the reference's parameters change with the refused values and
stay the same with the ignored ones.
"""

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import unigen  # noqa: E402
from test_dit_parity import RefDiT, max_rel_err, randomize  # noqa: E402
from test_dit_parity import inputs as dit_inputs, run_ref as run_official  # noqa: E402
from test_mmdit import run as run_mmdit, run_ref as run_sd3  # noqa: E402
from test_uvit import check_parity as check_uvit, inputs as uvit_inputs  # noqa: E402
from test_flux import inputs as flux_inputs, run as run_flux, run_ref as run_flux_ref  # noqa: E402
from unigen.convert import dit as dit_convert, mmdit as mmdit_convert, uvit as uvit_convert  # noqa: E402
from unigen.convert import flux as flux_convert  # noqa: E402
from unigen.convert.dit import infer_official_config  # noqa: E402
from unigen.errors import WeightError  # noqa: E402
from unigen.models import MMDiT, UViT  # noqa: E402
from unigen.models.dit import DiT  # noqa: E402
from unigen.models.flux import Flux  # noqa: E402

RTOL = 1e-4
RELEASED = {p.name[:-len(".json")]: json.loads(p.read_text())
            for p in sorted((pathlib.Path(__file__).parent / "released_configs").glob("*.json"))}
DIT_256, DIT_512 = "facebook_DiT-XL-2-256.transformer", "facebook_DiT-XL-2-512.transformer"
SD3_MEDIUM = "stabilityai_stable-diffusion-3-medium-diffusers.transformer"
SD35_MEDIUM = "stabilityai_stable-diffusion-3.5-medium.transformer"
SD35_LARGE = "stabilityai_stable-diffusion-3.5-large.transformer"
UNIDIFFUSER_V1, UNIDIFFUSER_V0 = "thu-ml_unidiffuser-v1.unet", "thu-ml_unidiffuser-v0.unet"
OFFICIAL_256, OFFICIAL_512 = "official_DiT-XL-2-256x256", "official_DiT-XL-2-512x512"
FLUX_DEV, FLUX_SCHNELL = "black-forest-labs_FLUX.1-dev.transformer", "black-forest-labs_FLUX.1-schnell.transformer"

# The fields a shrink may change: sizes only (the official flags name their sizes through `model`,
# so those shrinks give the network's sizes directly).
SIZE_FIELDS = {"num_layers", "num_attention_heads", "attention_head_dim", "sample_size", "caption_projection_dim",
               "joint_attention_dim", "pooled_projection_dim", "pos_embed_max_size", "dual_attention_layers",
               "text_dim", "clip_img_dim", "num_text_tokens", "depth", "hidden_size", "num_heads", "image_size",
               "num_single_layers", "axes_dims_rope"}
_DIT = dict(num_layers=2, num_attention_heads=2, attention_head_dim=8, sample_size=8)
# SD3: width 2 x 8 (the caption projection is the width), 12-wide text tokens, a 10-wide pooled
# vector; the position table keeps the released ratio to sample_size (192 / 128, 384 / 128).
_SD3 = dict(num_layers=3, num_attention_heads=2, attention_head_dim=8, caption_projection_dim=16,
            joint_attention_dim=12, pooled_projection_dim=10, sample_size=8, pos_embed_max_size=12)
# UniDiffuser: the sizes of tests/test_uvit.py's inputs (8 x 8 x 4 latents, 5 text tokens of 8, CLIP 12)
_UVIT = dict(num_layers=4, num_attention_heads=2, attention_head_dim=16, sample_size=8, text_dim=8, clip_img_dim=12,
             num_text_tokens=5)
# Flux: width 2 x 16 (RoPE axes 4 / 6 / 6 of each head: released files leave axes_dims_rope to its
# default, so the shrink writes it), 2 double + 2 single blocks; the sizes of tests/test_flux.py's inputs
_FLUX = dict(num_layers=2, num_single_layers=2, num_attention_heads=2, attention_head_dim=16, joint_attention_dim=12,
             pooled_projection_dim=10, axes_dims_rope=[4, 6, 6])
SHRINK = {
    OFFICIAL_256: dict(depth=2, hidden_size=32, num_heads=4, image_size=64),
    OFFICIAL_512: dict(depth=2, hidden_size=32, num_heads=4, image_size=128),
    DIT_256: _DIT, DIT_512: {**_DIT, "sample_size": 16},
    SD3_MEDIUM: _SD3, SD35_LARGE: _SD3,
    SD35_MEDIUM: {**_SD3, "pos_embed_max_size": 24, "dual_attention_layers": [0, 1]},  # released: 0-12 of 24
    UNIDIFFUSER_V1: _UVIT, UNIDIFFUSER_V0: _UVIT,
    FLUX_DEV: _FLUX, FLUX_SCHNELL: _FLUX,
}
CASES = sorted(RELEASED)


def test_every_released_config_has_a_shrink_of_sizes_only():
    assert set(SHRINK) == set(RELEASED)
    for name, shrink in SHRINK.items():
        assert set(shrink) <= SIZE_FIELDS, name
        if RELEASED[name]["format"] == "diffusers":
            assert set(shrink) <= set(RELEASED[name]["config"]) | {"dual_attention_layers", "axes_dims_rope"}, name


def shrunk(name: str) -> dict:
    return {**RELEASED[name]["config"], **SHRINK[name]}


# ---------------------------------------------------------------- the references, in PyTorch
# DiT Table 1 (facebookresearch/DiT models.py DiT_models): depth, hidden size, heads by size name.
OFFICIAL_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def official_network(args: dict, **sizes) -> dict:
    """RefDiT's arguments as the official sample.py builds the network from train.py's flags:
    DiT_models[model](input_size=image_size // 8, num_classes=num_classes), DiT's class defaults
    (in_channels 4, learned sigma)."""
    size, patch = args["model"].removeprefix("DiT-").split("/")
    depth, hidden, heads = OFFICIAL_SIZES[size]
    depth, hidden, heads = sizes.get("depth", depth), sizes.get("hidden_size", hidden), sizes.get("num_heads", heads)
    return dict(input_size=sizes.get("image_size", args["image_size"]) // 8, patch=int(patch), in_ch=4, dim=hidden,
                depth=depth, heads=heads, num_classes=args["num_classes"], learn_sigma=True)


def reference(config: dict):
    """The diffusers model its config.json builds, through diffusers' own class lookup (a legacy
    `Transformer2DModel` with norm_type "ada_norm_zero" comes back a DiTTransformer2DModel)."""
    return getattr(diffusers, config["_class_name"]).from_config(config)


def parameter_shapes(config: dict) -> dict:
    with torch.device("meta"):
        return {k: tuple(p.shape) for k, p in reference(config).named_parameters()}


# The parameters a reference holds that its forward pass never runs: UniDiffuserModel's inner
# UTransformer2DModel builds a patch embedding of its own, but is fed embedded tokens
# (hidden_states_is_embedding=True); unigen does not keep it (unigen/convert/uvit.py).
UNUSED = {"UniDiffuserModel": ("transformer.pos_embed.",)}
MAPPERS = {"DiTTransformer2DModel": (dit_convert.diffusers_config, DiT),
           "SD3Transformer2DModel": (mmdit_convert.diffusers_config, MMDiT),
           "UniDiffuserModel": (uvit_convert.diffusers_config, UViT),
           "FluxTransformer2DModel": (flux_convert.diffusers_config, Flux)}


def unigen_count(model_cls, cfg) -> int:
    # scanned: the same parameters stacked per run of identical blocks, and traced once per run
    # instead of once per block (fewer equations to trace)
    cfg = dataclasses.replace(cfg, scan_layers=True)
    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))


# ---------------------------------------------------------------- full size: parameter counts
@pytest.mark.parametrize("name", CASES)
def test_full_size_parameter_count(name):
    released = RELEASED[name]
    if released["format"] == "official DiT .pt":
        with torch.device("meta"):
            ref = RefDiT(**official_network(released["config"]))
        # pos_embed is a frozen nn.Parameter (requires_grad=False) in the official DiT: the fixed
        # sin-cos table, which unigen computes instead of storing
        expected = sum(p.numel() for p in ref.parameters() if p.requires_grad)
        if released["config"]["image_size"] == 256:  # the re-implementation against the official count:
            # train.py logs "DiT Parameters: 675,129,632" for DiT-XL/2 at 256 (the 256-token table included)
            assert sum(p.numel() for p in ref.parameters()) == 675_129_632
        cfg = infer_official_config(ref.state_dict())  # what the loader reads off the file: shapes only
        model_cls = DiT
    else:
        with torch.device("meta"):
            ref = reference(released["config"])
        kind = type(ref).__name__
        unused = UNUSED.get(kind, ())
        expected = sum(p.numel() for k, p in ref.named_parameters() if not k.startswith(unused))
        to_config, model_cls = MAPPERS[kind]
        cfg = to_config(released["config"])
    got = unigen_count(model_cls, cfg)
    print(f"{name}: {got:,} parameters")
    assert got == expected, (got, expected)


# ---------------------------------------------------------------- shrunk: load and compare
def _official(tmp_path, name):
    args, sizes = RELEASED[name]["config"], SHRINK[name]
    model = RefDiT(**official_network(args, **sizes))
    randomize(model, seed=1)
    model.eval()
    path = tmp_path / RELEASED[name]["file"]
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)  # a raw state dict, as released
    # the head count is not in a state dict: the one override the loader takes for it (pretrained.py)
    ours = unigen.from_pretrained(str(path), num_heads=sizes["num_heads"])
    x, t, _ = dit_inputs(batch=3, size=sizes["image_size"] // 8, ch=4)
    y = np.array([1, 777, args["num_classes"]])  # the last: the null class (classifier-free guidance)
    got = np.asarray(ours(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    return max_rel_err(got, run_official(model, x, t, y))


def _diffusers_folder(tmp_path, config):
    model = reference(config)
    randomize(model, seed=2)  # every parameter random: zero-initialised adaLN / biases would hide misplacements
    model.eval()
    folder = tmp_path / "model"
    model.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(config, indent=2))  # the config as released, not as re-saved
    return model, folder


def _dit(model, ours, config):
    x, t, _ = dit_inputs(batch=3, size=config["sample_size"], ch=config["in_channels"])
    y = np.array([1, 777, config["num_embeds_ada_norm"]])
    got = np.asarray(ours(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), timestep=torch.from_numpy(t),
                    class_labels=torch.from_numpy(y)).sample.permute(0, 2, 3, 1).numpy()
    return max_rel_err(got, ref)


def _sd3(model, ours, config):
    rs = np.random.RandomState(0)  # a non-square 6 x 10 latent inside the position table
    args = (rs.randn(2, 6, 10, config["in_channels"]).astype(np.float32), rs.uniform(0, 1000, 2).astype(np.float32),
            rs.randn(2, 5, config["joint_attention_dim"]).astype(np.float32),
            rs.randn(2, config["pooled_projection_dim"]).astype(np.float32))
    return max_rel_err(run_mmdit(ours, *args), run_sd3(model, *args))


def _unidiffuser(model, ours, config):
    # data_type as diffusers' pipeline passes it, to v0 (no data-type embedding: ignored) and v1 alike
    errs = check_uvit(ours, model, uvit_inputs(batch=2, seed=0, data_type=True))
    scalars = {**uvit_inputs(batch=2, seed=1), "t_img": 0, "t_text": 1000, "data_type": 1}
    return max(errs + check_uvit(ours, model, scalars))


def _flux(model, ours, config):
    args = flux_inputs(guidance=config["guidance_embeds"], channels=config["in_channels"] // 4)  # 6 x 10 latents
    return max_rel_err(run_flux(ours, args), run_flux_ref(model, args))


COMPARE = {"DiTTransformer2DModel": (DiT, _dit), "SD3Transformer2DModel": (MMDiT, _sd3),
           "UniDiffuserModel": (UViT, _unidiffuser), "FluxTransformer2DModel": (Flux, _flux)}


@pytest.mark.parametrize("name", CASES)
def test_shrunk_release_loads_and_matches(tmp_path, name):
    if RELEASED[name]["format"] == "official DiT .pt":
        err = _official(tmp_path, name)
    else:
        config = shrunk(name)
        model, folder = _diffusers_folder(tmp_path, config)
        ours = unigen.from_pretrained(str(folder))
        model_cls, compare = COMPARE[type(model).__name__]
        assert isinstance(ours, model_cls)
        err = compare(model, ours, config)
    print(f"{name}: max relative error {err:.2e}")
    assert err <= RTOL, err


# ---------------------------------------------------------------- field by field
SHORT = {DIT_256: "dit", SD35_MEDIUM: "sd35", UNIDIFFUSER_V1: "unidiffuser"}
# (released config, field, value): the reference builds a different network with the value, and
# unigen's network has no such option -> refused, the message naming the field.
REFUSED = [
    (DIT_256, "attention_bias", False), (DIT_256, "norm_elementwise_affine", True), (DIT_256, "activation_fn", "geglu"),
    (SD35_MEDIUM, "qk_norm", "layer_norm"),
    (UNIDIFFUSER_V1, "cross_attention_dim", 16), (UNIDIFFUSER_V1, "norm_type", "ada_norm"),
    (UNIDIFFUSER_V1, "activation_fn", "swiglu"),
]
# (released config, field, value): fields the reference takes and does not read (the legacy
# Transformer2DModel's, dropped when diffusers loads a DiT; U-ViT options passed through unused), or
# whose value leaves an inference forward pass unchanged (dropout, float32 attention upcasting) ->
# accepted, the same unigen network.
IGNORED = [
    (DIT_256, "cross_attention_dim", 1152), (DIT_256, "num_vector_embeds", 8), (DIT_256, "only_cross_attention", True),
    (DIT_256, "use_linear_projection", True), (DIT_256, "norm_num_groups", 8), (DIT_256, "dropout", 0.1),
    (DIT_256, "upcast_attention", True), (DIT_256, "caption_channels", 4096), (DIT_256, "interpolation_scale", 2),
    (UNIDIFFUSER_V1, "num_embeds_ada_norm", None), (UNIDIFFUSER_V1, "norm_type", "ada_norm_zero"),
    (UNIDIFFUSER_V1, "num_vector_embeds", 8), (UNIDIFFUSER_V1, "only_cross_attention", True),
    (UNIDIFFUSER_V1, "use_linear_projection", True), (UNIDIFFUSER_V1, "norm_num_groups", 8),
    (UNIDIFFUSER_V1, "dropout", 0.1), (UNIDIFFUSER_V1, "upcast_attention", True),
    (UNIDIFFUSER_V1, "ff_final_dropout", False),
]


@pytest.mark.parametrize("name,field,value", REFUSED, ids=[f"{SHORT[n]}-{f}" for n, f, _ in REFUSED])
def test_field_the_reference_reads_and_unigen_cannot_honour_is_refused(tmp_path, name, field, value):
    config = shrunk(name)
    changed = {**config, field: value}
    assert parameter_shapes(changed) != parameter_shapes(config)  # the reference reads it
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(changed))  # the config is refused before any weight is read
    with pytest.raises(WeightError, match=f"'{field}'"):
        unigen.from_pretrained(str(folder))


@pytest.mark.parametrize("name,field,value", IGNORED, ids=[f"{SHORT[n]}-{f}" for n, f, _ in IGNORED])
def test_field_the_reference_ignores_does_not_stop_a_load(name, field, value):
    config = shrunk(name)
    changed = {**config, field: value}
    assert parameter_shapes(changed) == parameter_shapes(config)  # the same reference network
    with torch.device("meta"):
        to_config, _ = MAPPERS[type(reference(config)).__name__]
    assert to_config(changed) == to_config(config)


def test_legacy_class_names_resolve_as_diffusers_does(tmp_path):
    """`Transformer2DModel` is read by norm_type, as diffusers' _CLASS_REMAPPING_DICT does: a DiT for
    "ada_norm_zero" (the shrunk-release tests load facebook/DiT-XL-2-256 that way); PixArt-alpha
    ("ada_norm_single") and a plain Transformer2DModel have no unigen loader, and say so."""
    folder = tmp_path / "model"
    folder.mkdir()
    legacy = RELEASED[DIT_256]["config"]
    with torch.device("meta"):
        assert type(reference(legacy)).__name__ == "DiTTransformer2DModel"
        pixart = {**legacy, "norm_type": "ada_norm_single", "cross_attention_dim": 1152, "caption_channels": 4096}
        assert type(reference(pixart)).__name__ == "PixArtTransformer2DModel"
    (folder / "config.json").write_text(json.dumps(pixart))
    with pytest.raises(WeightError, match="norm_type='ada_norm_single' as PixArtTransformer2DModel, which has no "
                                          "unigen loader"):
        unigen.from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({**legacy, "norm_type": "layer_norm"}))
    with pytest.raises(WeightError, match="Transformer2DModel with norm_type='layer_norm' has no unigen loader"):
        unigen.from_pretrained(str(folder))
