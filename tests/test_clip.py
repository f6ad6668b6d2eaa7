"""unigen.text.clip / clip_tokenizer / convert.clip against transformers' CLIP.

(a) parity: random-weight `CLIPTextModel`, `CLIPTextModelWithProjection` and `CLIPModel` saved with
    save_pretrained, loaded by unigen, same outputs (every hidden state, last state, pooled, text
    embeddings; float32, <= 1e-4 relative) on padded batches with and without attention_mask (a
    left-padded row included: transformers' default sdpa attention gives zero to a query that sees no
    key, and so does unigen), for a
    CLIP-L shape (quick_gelu, eos_token_id 2: pooled at argmax(ids)) and a CLIP-G shape (gelu,
    projection, an eos id that is not the largest id in its row), shrunk in size only; scan_layers
    on and off equal;
(b) the released SD3 text encoder config.json files (tests/released_configs/encoders/clip_*.json):
    full-size parameter counts equal transformers', and shrunk in size fields only they load in
    both libraries and agree;
(c) the tokenizer against transformers' CLIPTokenizer / CLIPTokenizerFast (one class in
    transformers 5, the one diffusers uses) on a CLIP-laid-out vocab.json + merges.txt trained
    here, for both pad tokens ("<|endoftext|>" and SD3 tokenizer_2's "!") and the folder layouts
    the hub has (SD3's added_tokens_decoder, SD1's AddedToken dicts, a tokenizer.json);
(d) bad folders and fields fail with WeightError / ConfigError naming them.

torch / transformers are imported inside the tests that compare with them.
"""

import functools
import json
import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
import unigen.convert.clip  # noqa: F401  (registers model types "clip_text_model" and "clip")
from unigen.convert.clip import clip_text_config, load_clip_text
from unigen.errors import ConfigError, WeightError
from unigen.text.clip import CLIPTextConfig, CLIPTextModel
from unigen.text.clip_tokenizer import CLIPTokenizer

RTOL = 1e-4
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released_configs", "encoders")
RELEASED = ["clip_vit_large_patch14_text", "clip_vit_bigg14_text_with_projection"]

# Shrunk in size only. L: OpenAI CLIP-L's activation and the legacy eos_token_id 2 (pool at argmax);
# G: OpenCLIP bigG's exact GELU and an eos id (300) below other ids of its rows, so argmax would miss it.
SHAPES = {
    "L": dict(vocab_size=400, hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=24, hidden_act="quick_gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1,
              projection_dim=40, layer_norm_eps=1e-5),
    "G": dict(vocab_size=400, hidden_size=40, intermediate_size=160, num_hidden_layers=2, num_attention_heads=5,
              max_position_embeddings=24, hidden_act="gelu", eos_token_id=300, bos_token_id=299, pad_token_id=0,
              projection_dim=32, layer_norm_eps=1e-5),
}
# (bos, eos, pad) ids the batches use: CLIP-L pads with its end-of-text token, bigG with "!" (id 0)
SPECIAL = {"L": (398, 399, 399), "G": (299, 300, 0)}
T = 16


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def perturb(model, seed=0):
    """LayerNorm scales / biases away from 1 / 0, so a misplaced one shows."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def prompt_batch(shape: str, seed=0):
    """(ids, mask) as CLIP's tokenizer lays them out: bos, text, eos, then pad on the right. Row
    lengths T, 9, 4 and 2 (the empty prompt). The CLIP-G batch adds a row padded with the eos id (the
    first eos must be pooled), one whose text holds ids above the eos id before it (argmax(ids) would
    pool there), and one padded on the left (queries that see no key: see unigen/text/clip.py)."""
    bos, eos, pad = SPECIAL[shape]
    rs = np.random.RandomState(seed)
    vocab = SHAPES[shape]["vocab_size"]
    lengths = [T, 9, 4, 2] + ([7, 12, 6] if shape == "G" else [])
    pads = [pad] * 4 + ([eos, pad, pad] if shape == "G" else [])
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for i, (n, p) in enumerate(zip(lengths, pads)):
        text = rs.randint(3, 398 if shape == "L" else vocab, n - 2)
        text[text == eos] = 5
        text[text == bos] = 6
        if shape == "G" and i == 5:
            text[:3] = vocab - 1
        ids[i] = p
        ids[i, :n] = [bos, *text, eos]
        mask[i, :n] = 1
    if shape == "G":
        ids[6], mask[6] = np.roll(ids[6], T - lengths[6]), np.roll(mask[6], T - lengths[6])
    return ids, mask


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _run(graphdef, state, ids, mask, hidden_states, clip_skip):
    return nnx.merge(graphdef, state)(ids, mask, hidden_states=hidden_states, clip_skip=clip_skip)


def run(model, ids, mask=None, hidden_states=True, clip_skip=None):
    graphdef, state = nnx.split(model)
    return _run(graphdef, state, jnp.asarray(ids, jnp.int32), None if mask is None else jnp.asarray(mask),
                hidden_states, clip_skip)


def hf_text_model(folder, shape, projection, seed=0, **changes):
    """A random transformers CLIP text model of `shape` (perturbed), saved with save_pretrained."""
    import torch
    from transformers import CLIPTextConfig as HFConfig
    from transformers import CLIPTextModel as HFModel
    from transformers import CLIPTextModelWithProjection as HFProjected
    torch.manual_seed(seed)
    config = HFConfig(**{**SHAPES[shape], **changes})
    model = perturb((HFProjected if projection else HFModel)(config), seed).eval()
    assert model.config._attn_implementation == "sdpa"  # transformers' default, the one matched
    model.save_pretrained(str(folder))
    return model


def reference(model, ids, mask, projection):
    """transformers' outputs as numpy: (hidden states, last, pooled, text_embeds or None)."""
    import torch
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                  output_hidden_states=True)
    with torch.no_grad():
        text = (model.text_model if projection else model)(**kwargs)
        embeds = model(**kwargs).text_embeds.numpy() if projection else None
    return [h.numpy() for h in text.hidden_states], text.last_hidden_state.numpy(), text.pooler_output.numpy(), embeds


def assert_matches(ref, out, what=""):
    hidden, last, pooled, embeds = ref
    assert len(out.hidden_states) == len(hidden)
    for i, (a, b) in enumerate(zip(out.hidden_states, hidden)):
        assert a.shape == b.shape and max_rel_err(a, b) <= RTOL, (what, "hidden_states", i, max_rel_err(a, b))
    assert max_rel_err(out.last_hidden_state, last) <= RTOL, (what, "last", max_rel_err(out.last_hidden_state, last))
    assert max_rel_err(out.pooled, pooled) <= RTOL, (what, "pooled", max_rel_err(out.pooled, pooled))
    if embeds is None:
        assert out.text_embeds is None
    else:
        assert out.text_embeds.shape == embeds.shape
        assert max_rel_err(out.text_embeds, embeds) <= RTOL, (what, "text_embeds", max_rel_err(out.text_embeds, embeds))


# ---------------------------------------------------------------- (a) parity
@pytest.mark.parametrize("shape,projection,scan", [("L", False, False), ("L", True, True), ("G", True, False),
                                                    ("G", False, True)])
def test_parity_with_transformers(tmp_path, shape, projection, scan):
    pytest.importorskip("transformers")
    ref_model = hf_text_model(tmp_path, shape, projection)
    ours = unigen.from_pretrained(str(tmp_path))
    assert isinstance(ours, CLIPTextModel)
    assert ours.cfg.projection_dim == (SHAPES[shape]["projection_dim"] if projection else None)
    ids, mask = prompt_batch(shape)
    if shape == "G":  # the pooled positions differ from argmax(ids) in the last row: the test tells the rules apart
        assert np.argmax(ids[5]) != list(ids[5]).index(SPECIAL["G"][1])
    for with_mask in (False, True):
        out = run(ours, ids, mask if with_mask else None)
        assert_matches(reference(ref_model, ids, mask if with_mask else None, projection), out,
                       f"{shape} projection={projection} mask={with_mask}")
    if not scan:
        return
    # scan over the layers (and remat): the same parameters, the same numbers
    scanned = unigen.from_pretrained(str(tmp_path), scan_layers=True, remat=True)
    a, b = run(ours, ids, mask), run(scanned, ids, mask)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_clip_model_folder_reads_the_text_tower(tmp_path):
    """A whole CLIPModel folder: text_config, text_model.* weights and the model's text_projection
    (top-level projection_dim); the vision tower is skipped. text_embeds = get_text_features."""
    torch = pytest.importorskip("torch")
    from transformers import CLIPConfig, CLIPModel
    text = {k: v for k, v in SHAPES["L"].items() if k != "projection_dim"}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    torch.manual_seed(0)
    model = perturb(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))).eval()
    model.save_pretrained(str(tmp_path))
    ours = unigen.from_pretrained(str(tmp_path))
    assert ours.cfg.projection_dim == 24 and ours.cfg.eos_token_id == 2
    ids, mask = prompt_batch("L")
    with torch.no_grad():
        feats = model.get_text_features(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    out = run(ours, ids, mask)
    assert max_rel_err(out.text_embeds, feats.pooler_output.numpy()) <= RTOL
    assert max_rel_err(out.last_hidden_state, feats.last_hidden_state.numpy()) <= RTOL


def test_legacy_prefixed_layout_and_architectures(tmp_path):
    """Hub checkpoints keep the text tower under `text_model.` (transformers 4's CLIPTextModel); both
    layouts load alike. `architectures` decides the projection: CLIPTextModel leaves a
    text_projection.weight in the file unused, as transformers does."""
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file, save_file
    hf_text_model(tmp_path / "bare", "L", False)
    projected = hf_text_model(tmp_path / "proj", "L", True)
    sd = load_file(str(tmp_path / "bare" / "model.safetensors"))
    assert not any(k.startswith("text_model.") for k in sd)  # transformers 5 saves a bare CLIPTextModel
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({"text_model." + k: v for k, v in sd.items()}, str(legacy / "model.safetensors"))
    shutil.copy(tmp_path / "bare" / "config.json", legacy / "config.json")
    ids, mask = prompt_batch("L")
    a = run(load_clip_text(str(tmp_path / "bare")), ids, mask)
    b = run(load_clip_text(str(legacy)), ids, mask)
    np.testing.assert_array_equal(np.asarray(a.last_hidden_state), np.asarray(b.last_hidden_state))
    # a WithProjection file declared as CLIPTextModel: no projection; with no architectures: the file decides
    config = json.loads((tmp_path / "proj" / "config.json").read_text())
    (tmp_path / "proj" / "config.json").write_text(json.dumps({**config, "architectures": ["CLIPTextModel"]}))
    assert load_clip_text(str(tmp_path / "proj")).text_projection is None
    (tmp_path / "proj" / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                               if k != "architectures"}))
    out = run(load_clip_text(str(tmp_path / "proj")), ids, mask)
    assert_matches(reference(projected, ids, mask, True), out, "no architectures")


# ---------------------------------------------------------------- pure JAX
def tiny(**changes):
    fields = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=3, num_heads=2,
                  max_position_embeddings=12, projection_dim=8)
    return CLIPTextConfig(**{**fields, **changes})


def random_model(cfg, seed=0):
    """A model with random parameters, built abstractly and filled (no eager initialisers to compile)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: CLIPTextModel(cfg, rngs=nnx.Rngs(0))))
    rs = np.random.RandomState(seed)
    return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(0.3 * rs.standard_normal(x.shape), x.dtype), state))


def test_outputs_clip_skip_and_bfloat16():
    model = random_model(tiny())
    ids = np.random.RandomState(0).randint(0, 50, (2, 10))
    plain = nnx.eval_shape(lambda m: m(ids), model)  # shapes only: nothing compiled
    assert plain.hidden_states is None and plain.layer_state is None
    assert plain.last_hidden_state.shape == (2, 10, 16) and plain.pooled.shape == (2, 16)
    assert plain.text_embeds.shape == (2, 8)
    full = run(model, ids, hidden_states=True, clip_skip=1)
    assert len(full.hidden_states) == 4
    # clip_skip k: hidden_states[-(k + 2)], the states SD3 / SDXL feed their networks
    np.testing.assert_array_equal(np.asarray(full.layer_state), np.asarray(full.hidden_states[-3]))
    for bad in (3, -1, True):
        with pytest.raises(ValueError, match="clip_skip"):
            model(ids, clip_skip=bad)
    with pytest.raises(ValueError, match="max_position_embeddings=12"):
        model(np.zeros((1, 13), np.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, np.ones((2, 9)))
    half = random_model(tiny(dtype="bfloat16"))  # the same draws: the same parameters
    low = run(half, ids, hidden_states=False)
    assert low.last_hidden_state.dtype == jnp.bfloat16 and low.text_embeds.dtype == jnp.bfloat16
    assert max_rel_err(low.last_hidden_state.astype(jnp.float32), full.last_hidden_state) < 3e-2


def test_parameters_carry_logical_axes():
    for scan in (False, True):
        model = nnx.eval_shape(lambda: CLIPTextModel(tiny(scan_layers=scan), rngs=nnx.Rngs(0)))
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            axes = var.get_metadata().get("logical_axes")
            assert axes is not None and len(axes) + (scan and path[0] == "layers") == len(var.shape), path


def test_config_validation_names_the_field():
    for changes, field in [(dict(num_heads=3), "hidden_size"), (dict(hidden_act="swish"), "hidden_act"),
                           (dict(projection_dim=0), "projection_dim"), (dict(eos_token_id=-1), "eos_token_id"),
                           (dict(attention_backend="linear"), "attention_backend"), (dict(dtype="int8"), "dtype"),
                           (dict(scan_layers=1), "scan_layers")]:
        with pytest.raises(ValueError, match=f"CLIPTextConfig.{field}="):
            tiny(**changes).validate()


# ---------------------------------------------------------------- (b) released config.json files
def released(name):
    with open(os.path.join(HERE, name + ".json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


SMALL = dict(vocab_size=400, hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             projection_dim=24)


@pytest.mark.parametrize("name", RELEASED)
def test_released_config_full_size(name):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = released(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field of the released file is known
        cfg = clip_text_config(config, name)
    big = name == "clip_vit_bigg14_text_with_projection"
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.projection_dim) == (
        (1280, 32, 20, 5120, 1280) if big else (768, 12, 12, 3072, 768))
    assert cfg.hidden_act == ("gelu" if big else "quick_gelu") and cfg.eos_token_id == 2
    with torch.device("meta"):
        ref = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**config))
    abstract = nnx.eval_shape(lambda: CLIPTextModel(cfg, rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert ours == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", RELEASED)
def test_released_config_shrunk_loads_and_matches(tmp_path, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = {**released(name), **SMALL}
    assert set(SMALL) <= set(released(name))
    torch.manual_seed(0)
    perturb(transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**config))).save_pretrained(
        str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(config))  # the released field set, as released
    ref = transformers.CLIPTextModelWithProjection.from_pretrained(str(tmp_path)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = unigen.from_pretrained(str(tmp_path))
    ids, mask = prompt_batch("L")  # eos 399 is the largest id: what eos_token_id 2 (argmax) relies on
    assert_matches(reference(ref, ids, mask, True), run(ours, ids, mask), name)


# ---------------------------------------------------------------- (c) tokenizer
# A CLIP-laid-out vocabulary trained here: the 256 byte symbols in CLIP's order, the same with "</w>",
# one token per merge in merge order, then <|startoftext|> and <|endoftext|>.
CORPUS = [
    "a photo of a cat sitting on a mat", "the quick brown fox jumps over the lazy dog",
    "an astronaut riding a horse on the moon, digital art", "a painting of a city at night in the rain",
    "portrait of a woman with red hair, oil on canvas", "a bowl of fruit on a wooden table, studio lighting",
    "mountains and a lake at sunrise, highly detailed", "a cute corgi wearing sunglasses on the beach",
    "cyberpunk street with neon signs and flying cars", "watercolor illustration of a lighthouse by the sea",
] * 10

PROMPTS = [
    "a photo of a cat", "", " ", "A PHOTO OF A CAT", "An Astronaut Riding A Horse", "  extra   spaces\tand\ttabs  ",
    "new\nlines\r\nhere", "wow!!", "hello!world", "what?! really...", "don't you're it's we'll they've I'm he'd",
    "café naïve résumé", "e\u0301 (decomposed accent)", "ÀÉÎÕÜ upper accents", "東京タワーの夜景", "🐱🎉 emoji party 🚀",
    "Привет мир", "مرحبا بالعالم", "3.14159 and 1234567890", "price: $100 & 50% off #sale @home",
    "<html>&amp; entities</html>", "x<|endoftext|>y", "<|startoftext|>start", "zero\u200bwidth",
    "the quick brown fox jumps over the lazy dog " * 6, "a" * 200, "supercalifragilisticexpialidocious",
    "mixed CASE with Numbers 42 and Symbols !@#", "a painting, by artist; (masterpiece) [best quality] {ok}",
    "tab\tseparated\tvalues", "ends with punctuation!", "!", "!!!", "   leading and trailing   ",
]


def byte_symbols():
    """The 256 byte symbols of byte-level BPE in CLIP's (GPT-2's) order: printable Latin-1 bytes as
    themselves, the other bytes shifted to code points from 256 on."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = {b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in kept)}
    return [chr(b) for b in kept] + [shifted[b] for b in range(256) if b not in kept]


def sd3_tokenizer_config(pad, vocab):
    token = lambda content, normalized: dict(content=content, lstrip=False, normalized=normalized, rstrip=False,
                                             single_word=False, special=True)
    decoder = {str(vocab["<|startoftext|>"]): token("<|startoftext|>", True),
               str(vocab["<|endoftext|>"]): token("<|endoftext|>", False)}
    if pad == "!":
        decoder = {"0": token("!", False), **decoder}
    return dict(add_prefix_space=False, added_tokens_decoder=decoder, bos_token="<|startoftext|>",
                clean_up_tokenization_spaces=True, do_lower_case=True, eos_token="<|endoftext|>", errors="replace",
                model_max_length=77, pad_token=pad, tokenizer_class="CLIPTokenizer", unk_token="<|endoftext|>")


def sd1_tokenizer_config(pad):
    token = lambda content: {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                             "rstrip": False, "single_word": False}
    return dict(add_prefix_space=False, bos_token=token("<|startoftext|>"), do_lower_case=True,
                eos_token=token("<|endoftext|>"), errors="replace", model_max_length=77, pad_token=pad,
                tokenizer_class="CLIPTokenizer", unk_token=token("<|endoftext|>"))


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory):
    """{layout: folder}: SD3 tokenizer/ and tokenizer_2/ layouts (vocab.json + merges.txt + tokenizer_config.json
    with added_tokens_decoder + special_tokens_map.json), SD1's older layout (AddedToken dicts), and the
    tokenizer.json folders transformers 5 writes."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    trainer_tok = Tokenizer(BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    trainer_tok.normalizer = normalizers.Lowercase()
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer_tok.train_from_iterator(CORPUS, BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
        show_progress=False))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    assert len(merges) > 150
    symbols = byte_symbols()
    vocab = {}
    for token in symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [
            "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    root = tmp_path_factory.mktemp("clip_tokenizers")
    folders = {}
    for name, pad in (("eot", "<|endoftext|>"), ("bang", "!")):
        for layout, config in (("sd3", sd3_tokenizer_config(pad, vocab)), ("sd1", sd1_tokenizer_config(pad))):
            folder = root / f"{layout}_{name}"
            folder.mkdir()
            (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                               encoding="utf-8")
            (folder / "tokenizer_config.json").write_text(json.dumps(config))
            specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
            (folder / "special_tokens_map.json").write_text(json.dumps(specials))
            folders[f"{layout}_{name}"] = str(folder)
    return folders


@pytest.fixture(scope="module")
def saved_folders(tokenizer_folders, tmp_path_factory):
    """tokenizer.json folders as transformers 5 saves them (and one with tokenizer.json alone)."""
    pytest.importorskip("transformers")
    from transformers import CLIPTokenizer as HFTokenizer
    root = tmp_path_factory.mktemp("clip_tokenizers_saved")
    out = {}
    for name in ("eot", "bang"):
        folder = root / f"saved_{name}"
        HFTokenizer.from_pretrained(tokenizer_folders[f"sd3_{name}"]).save_pretrained(str(folder))
        assert (folder / "tokenizer.json").is_file() and not (folder / "merges.txt").exists()
        out[f"saved_{name}"] = str(folder)
    alone = root / "json_only"
    alone.mkdir()
    shutil.copy(os.path.join(out["saved_bang"], "tokenizer.json"), alone / "tokenizer.json")
    out["json_only"] = str(alone)
    return out


def _compare(folder, hf_class, padding="max_length"):
    ref = hf_class.from_pretrained(folder)
    ours = CLIPTokenizer.from_folder(folder)
    assert (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id) == (ref.pad_token_id, ref.bos_token_id,
                                                                          ref.eos_token_id)
    want = ref(PROMPTS, padding=padding, max_length=77, truncation=True, return_tensors="np")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours(PROMPTS, padding=padding)
    long = [p for p in PROMPTS if len(ref(p)["input_ids"]) > 77]
    assert long and len([w for w in caught if "CLIP tokens long" in str(w.message)]) == len(long)
    assert got.input_ids.dtype == np.int32 and got.attention_mask.dtype == np.int32
    assert got.input_ids.shape == want["input_ids"].shape
    for i, p in enumerate(PROMPTS):
        assert list(got.input_ids[i]) == list(want["input_ids"][i]), (folder, p)
        assert list(got.attention_mask[i]) == list(want["attention_mask"][i]), (folder, p)
    return ours


@pytest.mark.parametrize("layout", ["sd3_eot", "sd3_bang", "sd1_eot", "sd1_bang"])
def test_tokenizer_matches_transformers(tokenizer_folders, layout):
    transformers = pytest.importorskip("transformers")
    for hf_class in (transformers.CLIPTokenizer, transformers.CLIPTokenizerFast):
        ours = _compare(tokenizer_folders[layout], hf_class)
    assert ours.pad_token == ("!" if layout.endswith("bang") else "<|endoftext|>")
    assert ours.pad_token_id == (0 if layout.endswith("bang") else ours.eos_token_id)
    _compare(tokenizer_folders[layout], transformers.CLIPTokenizer, padding="longest")


@pytest.mark.parametrize("layout", ["saved_eot", "saved_bang", "json_only"])
def test_tokenizer_json_folders_match(saved_folders, layout):
    transformers = pytest.importorskip("transformers")
    _compare(saved_folders[layout], transformers.CLIPTokenizer)


def test_tokenizer_options(tokenizer_folders):
    tok = CLIPTokenizer.from_folder(tokenizer_folders["sd3_bang"])
    assert tok.model_max_length == 77
    batch = tok(["a cat", "a dog on a mat"], max_length=10)
    assert batch["input_ids"].shape == (2, 10) and batch.keys() == ("input_ids", "attention_mask")
    assert list(batch.attention_mask[0]) == [1] * (len(tok.token_ids("a cat")) + 2) + [0] * (
        10 - len(tok.token_ids("a cat")) - 2)
    longest = tok(["a cat", "a dog on a mat"], padding="longest")
    assert longest.input_ids.shape[1] == len(tok.token_ids("a dog on a mat")) + 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = tok(["cat " * 20], max_length=6)
    assert len(caught) == 1 and "cat cat" in str(caught[0].message)
    assert cut.input_ids[0, 0] == tok.bos_token_id and cut.input_ids[0, -1] == tok.eos_token_id
    with pytest.raises(ValueError, match="truncation is off"):
        tok(["cat " * 20], max_length=6, truncation=False)
    assert tok(["cat " * 20], padding="longest", truncation=False).input_ids.shape[1] == 22
    with pytest.raises(ValueError, match="same number of tokens"):
        tok(["a", "a cat dog"], padding=False)
    for bad in ("a prompt", [1], []):
        with pytest.raises(ValueError):
            tok(bad)
    with pytest.raises(ValueError, match="max_length"):
        tok(["a"], max_length=1)
    with pytest.raises(ValueError, match="padding"):
        tok(["a"], padding="left")


# ---------------------------------------------------------------- (d) bad input
def test_bad_folders_and_fields(tmp_path, tokenizer_folders):
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "clip"
    hf_text_model(folder, "L", True)
    config = json.loads((folder / "config.json").read_text())

    def with_config(**changes):
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return str(folder)
    with pytest.raises(WeightError, match="model_type 'bert'"):
        load_clip_text(with_config(model_type="bert"))
    with pytest.raises(WeightError, match="'hidden_act' = 'swish'"):
        load_clip_text(with_config(hidden_act="swish"))
    with pytest.raises(WeightError, match="'eos_token_id' = \\[49407, 2\\]"):
        load_clip_text(with_config(eos_token_id=[49407, 2]))
    with pytest.raises(WeightError, match="'hidden_size' = 50"):  # 50 heads-indivisible: named as in config.json
        load_clip_text(with_config(hidden_size=50))
    with pytest.raises(WeightError, match="quantization_config"):
        load_clip_text(with_config(quantization_config={"quant_method": "bitsandbytes"}))
    with pytest.raises(WeightError, match="'architectures'"):
        load_clip_text(with_config(architectures=["CLIPVisionModel"]))
    with pytest.warns(UserWarning, match="rope_theta"):  # unknown fields: ignored with a warning, as transformers does
        load_clip_text(with_config(rope_theta=10000))
    with pytest.raises(WeightError, match="token_embedding.weight' has shape \\(400, 48\\), expected \\(401, 48\\)"):
        load_clip_text(with_config(vocab_size=401))
    with pytest.raises(ConfigError, match="num_layers"):
        load_clip_text(with_config(), num_layers=1)
    with pytest.raises(ConfigError, match="dtype"):
        load_clip_text(with_config(), dtype="int8")
    sd = load_file(str(folder / "model.safetensors"))
    del sd["text_model.encoder.layers.1.mlp.fc2.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(WeightError, match="missing key 'encoder.layers.1.mlp.fc2.weight'"):
        load_clip_text(with_config())
    # a folder of another kind: a BERT folder's config, a T5 tokenizer, no tokenizer files
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(WeightError, match="not a CLIP text model"):
        load_clip_text(str(bert))
    t5 = tmp_path / "t5"
    shutil.copytree(tokenizer_folders["sd3_eot"], t5)
    (t5 / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(WeightError, match="'tokenizer_class' = 'T5Tokenizer'"):
        CLIPTokenizer.from_folder(str(t5))
    with pytest.raises(WeightError, match="no CLIP tokenizer files"):
        CLIPTokenizer.from_folder(str(bert))
    broken = tmp_path / "broken"
    shutil.copytree(tokenizer_folders["sd3_eot"], broken)
    (broken / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(WeightError, match="line 2"):
        CLIPTokenizer.from_folder(str(broken))
