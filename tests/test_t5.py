"""unigen.text.t5 / t5_tokenizer / convert.t5: the T5 v1.1 encoder against transformers' T5EncoderModel
(random weights, float32, every hidden state <= 1e-4 relative), the released T5-v1.1-XXL config.json
(tests/released_configs/encoders/t5_v1_1_xxl.json) shrunk in size fields only and at full size (exact
parameter count, nothing allocated), a T5ForConditionalGeneration folder in safetensors shards read as an
encoder, the tokenizer against transformers' T5TokenizerFast on a Unigram tokenizer trained here, and
bad folders / fields failing by name.

torch / transformers are imported inside the tests that compare with them."""

import functools
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
import unigen.convert.t5  # noqa: F401  (registers model_type "t5" with unigen.from_pretrained)
from unigen.convert.t5 import load_t5_encoder, t5_config
from unigen.errors import ConfigError, WeightError
from unigen.text.t5 import T5Encoder, T5EncoderConfig, relative_position_buckets
from unigen.text.t5_tokenizer import T5Tokenizer

RELEASED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released_configs", "encoders",
                        "t5_v1_1_xxl.json")
RTOL = 1e-4
# Size fields only; everything else (gated-gelu, 32 buckets, max distance 128, eps, untied, ...) as released.
SMALL = dict(vocab_size=96, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3, num_decoder_layers=2)
T = 150  # longer than relative_attention_max_distance: the logarithmic buckets and the clamp are exercised


def released() -> dict:
    with open(RELEASED) as f:
        config = json.load(f)
    config.pop("_source")
    return config


def shrunk(**changes) -> dict:
    return {**released(), **SMALL, **changes}


def _randomise(model, seed):
    """transformers' init leaves the norms at 1; random scales make a wrong norm mapping show."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))


def write_reference(folder, config: dict, cls_name="T5EncoderModel", seed=0, **save):
    """A random-weight transformers model saved to `folder`, its config.json replaced by `config` as
    given (the released field set); returns the model reloaded from that folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    model = cls(transformers.T5Config.from_dict(config))
    _randomise(model, seed)
    model.save_pretrained(folder, **save)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    # float32 explicitly: transformers would otherwise load in the file's torch_dtype (float16)
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, T))
    mask = np.ones((3, T), np.int64)
    mask[1, 40:] = 0     # right padding
    mask[2, 1:] = 0      # one real token
    ids[mask == 0] = 0   # <pad>, as the tokenizer writes
    return ids, mask


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apply(graphdef, state, ids, mask, hidden_states):
    return nnx.merge(graphdef, state)(ids, mask, hidden_states=hidden_states)


def run(enc, ids, mask, hidden_states=False):
    """enc(ids, mask), jitted through nnx.split / merge; one compilation per architecture and option
    (eager op-by-op dispatch is slower on XLA:CPU)."""
    graphdef, state = nnx.split(enc)
    return _apply(graphdef, state, ids, mask, hidden_states)


def rel_err(ref, out) -> float:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    return float(np.abs(ref - out).max() / np.abs(ref).max())


def ref_states(model, ids, mask):
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("t5_encoder"))
    model = write_reference(folder, shrunk())
    ids, mask = batch(SMALL["vocab_size"])
    return folder, (ids, mask), ref_states(model, ids, mask)


# ---- (a) parity ------------------------------------------------------------------------------------

def test_buckets_match_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.t5.modeling_t5 import T5Attention
    n = 600
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    for buckets, distance in [(32, 128), (32, 64), (8, 20), (64, 256), (33, 100)]:
        ref = T5Attention._relative_position_bucket(rel, True, buckets, distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(n, buckets, distance), ref)


def test_parity_every_hidden_state(encoder_folder):
    folder, (ids, mask), (ref_last, ref_hidden) = encoder_folder
    enc = unigen.from_pretrained(folder)
    assert isinstance(enc, T5Encoder) and enc.cfg.gated and enc.cfg.activation == "gelu_new"
    out = run(enc, ids, mask, hidden_states=True)
    assert len(out.hidden_states) == len(ref_hidden) == SMALL["num_layers"] + 1
    for i, (r, o) in enumerate(zip(ref_hidden, out.hidden_states)):
        assert rel_err(r, o) <= RTOL, f"hidden state {i}"
    assert rel_err(ref_last, out.last_hidden_state) <= RTOL
    # transformers puts the final-norm output last
    np.testing.assert_array_equal(np.asarray(out.hidden_states[-1]), np.asarray(out.last_hidden_state))
    assert run(enc, ids, mask).hidden_states is None


def test_scan_and_remat_equal_unscanned(encoder_folder):
    folder, (ids, mask), _ = encoder_folder
    plain = run(unigen.from_pretrained(folder), ids, mask, hidden_states=True)
    scanned = unigen.from_pretrained(folder, scan_layers=True, remat=True)
    assert scanned.layers.qkv.kernel.shape[0] == SMALL["num_layers"]   # one stacked layer
    out = run(scanned, ids, mask, hidden_states=True)
    for a, b in zip(plain.hidden_states, out.hidden_states):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_padding_masked(encoder_folder):
    folder, (ids, mask), _ = encoder_folder
    enc = unigen.from_pretrained(folder)
    out = np.asarray(run(enc, ids, mask).last_hidden_state)
    # what sits at padded positions never reaches the real ones
    other = ids.copy()
    other[mask == 0] = 7
    np.testing.assert_allclose(np.asarray(run(enc, other, mask).last_hidden_state)[mask == 1], out[mask == 1],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 5e-2), ("float16", 1e-2)])
def test_half_precision_compute(encoder_folder, dtype, tol):
    folder, (ids, mask), (ref_last, _) = encoder_folder
    enc = unigen.from_pretrained(folder, dtype=dtype)
    out = run(enc, ids, mask).last_hidden_state
    assert out.dtype == jnp.float32   # the residual stream and outputs stay float32
    assert rel_err(ref_last, out) <= tol
    if dtype == "float16":   # wo runs in float32, as transformers keeps it
        assert enc.layers[0].wo.dtype == jnp.float32


@pytest.mark.parametrize("changes", [dict(feed_forward_proj="relu", tie_word_embeddings=True, is_gated_act=False,
                                          dense_act_fn="relu"),
                                     dict(feed_forward_proj="gated-silu", is_gated_act=True, dense_act_fn="silu"),
                                     dict(feed_forward_proj="gelu", is_gated_act=True, dense_act_fn="gelu")])
def test_other_feed_forwards(tmp_path, changes):
    """Original T5 (relu, tied), a gated SiLU, and a file whose own is_gated_act overrides its
    feed_forward_proj (transformers honours the explicit field)."""
    config = dict(shrunk(**changes), num_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=20)
    model = write_reference(str(tmp_path), config, seed=1)
    ids, mask = batch(SMALL["vocab_size"], seed=1)
    ref_last, _ = ref_states(model, ids, mask)
    enc = load_t5_encoder(str(tmp_path))
    assert enc.cfg.gated == changes["is_gated_act"] and enc.cfg.activation == changes["dense_act_fn"]
    assert rel_err(ref_last, run(enc, ids, mask).last_hidden_state) <= RTOL


def test_conditional_generation_folder_in_shards(tmp_path):
    """A T5ForConditionalGeneration folder saved in safetensors shards with an index: its encoder
    loads; decoder / lm_head weights are left out, and shards holding only them are not read."""
    import torch
    folder = str(tmp_path / "t5")
    model = write_reference(folder, dict(shrunk(), architectures=["T5ForConditionalGeneration"]),
                            cls_name="T5ForConditionalGeneration", seed=2, max_shard_size="40KB")
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    assert len(set(weight_map.values())) > 2 and any(k.startswith("decoder.") for k in weight_map)
    ids, mask = batch(SMALL["vocab_size"], seed=2)
    with torch.no_grad():
        ref = model.get_encoder()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    enc = unigen.from_pretrained(folder)
    assert rel_err(ref.last_hidden_state.numpy(), run(enc, ids, mask).last_hidden_state) <= RTOL

    # a shard holding only decoder weights may be absent; one with encoder weights may not
    decoder_only = {s for s in weight_map.values()} - {s for k, s in weight_map.items()
                                                         if not k.startswith(("decoder.", "lm_head."))}
    assert decoder_only
    for shard in decoder_only:
        os.remove(os.path.join(folder, shard))
    load_t5_encoder(folder)
    needed = weight_map["encoder.final_layer_norm.weight"]
    os.remove(os.path.join(folder, needed))
    with pytest.raises(WeightError, match=f"shard '{needed}' named in model.safetensors.index.json is missing"):
        load_t5_encoder(folder)


# ---- (b) the released config -----------------------------------------------------------------------

def test_released_config_full_size_parameter_count():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = released()
    cfg = t5_config(config, RELEASED, scan_layers=True)
    assert (cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_heads, cfg.num_layers, cfg.vocab_size) == \
        (4096, 64, 10240, 64, 24, 32128)
    assert cfg.gated and cfg.activation == "gelu_new" and cfg.layer_norm_epsilon == 1e-6
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (32, 128)
    abstract = nnx.eval_shape(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        ref = transformers.T5EncoderModel(transformers.T5Config.from_dict(config))
    assert ours == sum(p.numel() for p in ref.parameters()) == 4_762_310_656


def test_released_config_shrunk_builds(encoder_folder):
    folder, _, _ = encoder_folder
    with open(os.path.join(folder, "config.json")) as f:
        on_disk = json.load(f)
    assert set(on_disk) == set(released()) and all(
        on_disk[k] == v for k, v in released().items() if k not in SMALL)
    cfg = load_t5_encoder(folder).cfg
    assert cfg == t5_config(shrunk(), "x")


# ---- (c) tokenizer -------------------------------------------------------------------------------

CORPUS = [
    "a photo of a cat sitting on a red chair", "a painting of a dog in the style of van gogh",
    "an astronaut riding a horse on the moon", "a bowl of fruit on a wooden table, oil painting",
    "the quick brown fox jumps over the lazy dog", "a city skyline at night with neon lights",
    "portrait of an old man with a beard, highly detailed", "a cup of coffee next to a laptop",
    "two birds flying over a mountain lake at sunrise", "a small house in a snowy forest",
    "hello world! this is a test, with punctuation: yes; no? (maybe) [sure] {ok}",
    "numbers 1 2 3 42 100 2024 and symbols # $ % & * + = / \\ | ~ ^",
    "café naïve résumé über straße",
]
SENTENCES = [
    "a photo of a cat", "A Photo Of A Cat", "", " ", "   leading and trailing spaces   ",
    "whitespace   runs\tand\ttabs\nand\n\nnewlines", "a", "cat", "the the the the",
    "an astronaut riding a horse on the moon in a photorealistic style with dramatic lighting and clouds",
    "a bowl of fruit on a wooden table, oil painting, by a famous artist, trending, 8k, sharp focus, detailed",
    "hello world!", "punctuation... !!! ??? ,,, ;;; ::: --- ___", "(parentheses) [brackets] {braces} <angles>",
    "quotes 'single' \"double\" `back`", "café naïve résumé", "straße über Ärger", "日本語のテキスト",
    "emoji 🐱 and 🚀 here", "mixed 中文 and english words", "numbers 1234567890 3.14159 -42",
    "e-mail@example.com http://example.com/path?x=1", "zzzz qqqq xxxx unknown wordz",
    "a photo of a cat</s>", "<pad> literal pad", "<extra_id_1> sentinel in text",
    "two birds flying over a mountain lake at sunrise, wide angle, golden hour, bokeh, 35mm, film grain",
    "a small house in a snowy forest " * 4, "tab\tonly", "\n", "ends with space ",
    "   ", "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A Unigram tokenizer built the way T5's is: <pad>=0, </s>=1, <unk>=2, WhitespaceSplit + Metaspace,
    `$A </s>`, sentinels as special tokens; saved with its pre-tokenizer in the older Metaspace form
    (add_prefix_space) released files may have."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    folder = str(tmp_path_factory.mktemp("t5_tokenizer"))
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=220, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    tok.add_special_tokens([f"<extra_id_{i}>" for i in (2, 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    with open(path) as f:
        data = json.load(f)
    data["pre_tokenizer"]["pretokenizers"][1] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    with open(path, "w") as f:
        json.dump(data, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "extra_ids": 3, "model_max_length": 512}, f)
    return folder


@pytest.mark.parametrize("max_length", [8, 24])
def test_tokenizer_matches_t5_tokenizer_fast(tokenizer_folder, max_length):
    T5TokenizerFast = pytest.importorskip("transformers").T5TokenizerFast
    assert len(SENTENCES) >= 30
    ref = T5TokenizerFast.from_pretrained(tokenizer_folder)(
        SENTENCES, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
        return_tensors="np")
    tok = T5Tokenizer.from_folder(tokenizer_folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tok(SENTENCES, max_length=max_length)
    assert out.input_ids.dtype == np.int32 and out.input_ids.shape == (len(SENTENCES), max_length)
    np.testing.assert_array_equal(out.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"], ref["attention_mask"])
    whole = tok(SENTENCES, max_length=1, padding="longest", truncation=False).attention_mask.sum(1)
    assert 0 < len(caught) == (whole > max_length).sum()     # one warning per truncated prompt
    assert (out.input_ids[whole > max_length, -1] == 1).all()   # truncation keeps </s>


def test_tokenizer_longest_and_no_truncation(tokenizer_folder):
    T5TokenizerFast = pytest.importorskip("transformers").T5TokenizerFast
    ref = T5TokenizerFast.from_pretrained(tokenizer_folder)(SENTENCES[:12], padding="longest", return_tensors="np")
    out = T5Tokenizer.from_folder(tokenizer_folder)(SENTENCES[:12], max_length=10, padding="longest",
                                                    truncation=False)
    np.testing.assert_array_equal(out.input_ids, ref["input_ids"])
    with pytest.raises(ValueError, match="truncation=False"):
        T5Tokenizer.from_folder(tokenizer_folder)(SENTENCES[:12], max_length=10, truncation=False)


def test_tokenizer_folder_errors(tmp_path, tokenizer_folder):
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(WeightError, match="spiece.model but no tokenizer.json"):
        T5Tokenizer.from_folder(str(tmp_path))
    with pytest.raises(WeightError, match="no tokenizer folder"):
        T5Tokenizer.from_folder(str(tmp_path / "absent"))
    tok = T5Tokenizer.from_folder(tokenizer_folder)
    for bad, match in [(dict(max_length=0), "max_length"), (dict(max_length=8, padding="do_not_pad"), "padding")]:
        with pytest.raises(ValueError, match=match):
            tok(["a cat"], **bad)
    with pytest.raises(ValueError, match="one string"):
        tok("a cat", max_length=8)
    with pytest.raises(WeightError, match="'<nope>' is not in its vocabulary"):
        T5Tokenizer(tok.path, pad_token="<nope>")(["a cat"], max_length=8)


# ---- (d) bad folders and fields ------------------------------------------------------------------

def _config_folder(tmp_path, config) -> str:
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    return str(tmp_path)


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="bert"), "model_type 'bert' is not a T5 model"),
    (dict(feed_forward_proj="gated-gelu-x"), "field 'feed_forward_proj' = 'gated-gelu-x'"),
    (dict(feed_forward_proj="gated-swiglu", dense_act_fn=None), "field 'feed_forward_proj' = 'gated-swiglu'"),
    (dict(dense_act_fn="quick_gelu"), "field 'dense_act_fn' = 'quick_gelu'"),
    (dict(d_model="4096"), "field 'd_model' = '4096' should be int"),
    (dict(relative_attention_num_buckets=2), "relative_attention_num_buckets=2"),
    (dict(is_decoder=True), "field 'is_decoder'"),
    (dict(quantization_config={"quant_method": "bitsandbytes"}), "field 'quantization_config' \\(bitsandbytes"),
])
def test_bad_config_fields_named(tmp_path, changes, match):
    config = {k: v for k, v in dict(shrunk(), **changes).items() if v is not None}
    with pytest.raises(WeightError, match=match):
        load_t5_encoder(_config_folder(tmp_path, config))


def test_bad_folders(tmp_path, encoder_folder):
    with pytest.raises(WeightError, match="no config.json"):
        load_t5_encoder(str(tmp_path))
    with pytest.raises(WeightError, match=r"no \*.safetensors"):
        load_t5_encoder(_config_folder(tmp_path, shrunk()))
    # weights of another size than the config says
    folder, _, _ = encoder_folder
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(folder, "model.safetensors"), other / "model.safetensors")
    with pytest.raises(WeightError, match="'shared.weight' has shape"):
        load_t5_encoder(_config_folder(other, shrunk(d_model=64)))
    with pytest.raises(WeightError, match="unknown keys"):
        load_t5_encoder(_config_folder(other, shrunk(num_layers=2)))
    with pytest.raises(ConfigError, match="num_layers"):
        load_t5_encoder(folder, num_layers=2)


def test_config_validate_names_field():
    for changes, field in [(dict(attention_backend="einsum"), "attention_backend"), (dict(d_kv=0), "d_kv"),
                           (dict(relative_attention_max_distance=8), "relative_attention_max_distance"),
                           (dict(dtype="int8"), "dtype"), (dict(scan_layers=1), "scan_layers")]:
        with pytest.raises(ValueError, match=f"T5EncoderConfig.{field}="):
            T5EncoderConfig(**changes).validate()
    enc = nnx.eval_shape(lambda: T5Encoder(T5EncoderConfig(**{k: v for k, v in SMALL.items()
                                                                if k != "num_decoder_layers"}), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="input_ids of shape"):
        enc(np.zeros((4,), np.int32))
