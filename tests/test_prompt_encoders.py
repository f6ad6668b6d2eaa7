"""unigen.text.prompt_encoders: CLIP and T5 folders as prompt encoders (tokenize / encode ->
TextEncoding), against transformers on tiny random folders; the resolver and the task's loader
accept them (a diffusers pipeline's text_encoder*/ folder with its tokenizer*/ sibling included)
and still refuse other folders; the registry; and the digits text-to-image job trained and
prompted with a CLIP folder as `config.text.encoder` (a T5 folder built into the task and its
prompts encoded; training it would only recompile the same path).

The tokenizer builders are test_clip's and test_t5's (imported fixtures); torch / transformers
only build and check the references.
"""

import json
import os
import shutil

import numpy as np
import pytest

from test_clip import perturb, tokenizer_folders  # noqa: F401  (a module-scoped fixture)
from test_t5 import shrunk, write_reference
from test_t5 import tokenizer_folder as t5_tokenizer_folder  # noqa: F401  (a module-scoped fixture)
from test_text_to_image import tiny_config
from unigen.errors import ConfigError, WeightError
from unigen.tasks.frozen import text_encoder
from unigen.text import prompt_encoders as pe
from unigen.text.encoder import TextEncoding
from unigen.text.resolve import resolve_text_encoder

PROMPTS = ["a photo of a cat", "", "the quick brown fox jumps over the lazy dog, digital art"]
RTOL = 1e-5


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _copy_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))


@pytest.fixture(scope="module")
def clip_folders(tokenizer_folders, tmp_path_factory):  # noqa: F811
    """{"projected": a CLIPTextModelWithProjection folder holding its tokenizer,
        "pipeline": a pipeline-style root whose text_encoder_2/ (a CLIPTextModel, no projection) has
                    only weights and whose tokenizer_2/ sibling the tokenizer}, and the torch models."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok_dir = tokenizer_folders["sd3_eot"]
    with open(os.path.join(tok_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    common = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=77, eos_token_id=vocab["<|endoftext|>"],
                  bos_token_id=vocab["<|startoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    root = tmp_path_factory.mktemp("clip_prompt")
    torch.manual_seed(0)
    projected = perturb(transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(**common, hidden_act="quick_gelu", projection_dim=16)), 0).eval()
    projected.save_pretrained(str(root / "projected"))
    _copy_files(tok_dir, str(root / "projected"))
    plain = perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(**common, hidden_act="gelu")), 1).eval()
    plain.save_pretrained(str(root / "pipe" / "text_encoder_2"))
    _copy_files(tok_dir, str(root / "pipe" / "tokenizer_2"))
    (root / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    return ({"projected": str(root / "projected"), "pipeline": str(root / "pipe" / "text_encoder_2"),
             "pipe_root": str(root / "pipe")}, {"projected": projected, "pipeline": plain})


@pytest.fixture(scope="module")
def t5_folder(t5_tokenizer_folder, tmp_path_factory):  # noqa: F811
    """A T5EncoderModel folder (d_model 32) holding its tokenizer, and the torch model."""
    folder = str(tmp_path_factory.mktemp("t5_prompt"))
    model = write_reference(folder, shrunk(vocab_size=240, num_layers=2))
    _copy_files(t5_tokenizer_folder, folder)
    return folder, model


def _hf_clip(folder, model, texts, layer=-2, pad=77):
    import torch
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(folder)
    batch = tok(texts, padding="max_length", max_length=pad, truncation=True, return_tensors="pt")
    with torch.no_grad():  # no attention mask: diffusers' SD3 call
        out = model(input_ids=batch["input_ids"], output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    states = out.last_hidden_state if layer == "last" else out.hidden_states[layer]
    return states.numpy(), pooled.numpy(), batch["attention_mask"].numpy()


# ---- CLIP --------------------------------------------------------------------------------------
def test_clip_tokens_and_pooled_equal_transformers(clip_folders):
    folders, models = clip_folders
    enc = text_encoder(folders["projected"])  # the task's loader: resolve -> from_pretrained -> registry
    assert isinstance(enc, pe.CLIPPromptEncoder) and enc.layer == -2 and enc.max_length == 77
    assert text_encoder(folders["projected"]) is enc  # one per name and process
    states, pooled, mask = _hf_clip(folders["projected"], models["projected"], PROMPTS)
    out = enc.encode(PROMPTS)  # padded to the longest prompt: SD3's first T positions
    assert isinstance(out, TextEncoding)
    t = out.tokens.shape[1]
    assert t == int(mask.sum(1).max()) < 77 and out.tokens.shape == (3, t, 32) and out.pooled.shape == (3, 16)
    assert max_rel_err(out.tokens, states[:, :t]) <= RTOL
    assert max_rel_err(out.pooled, pooled) <= RTOL
    np.testing.assert_array_equal(np.asarray(out.mask), mask[:, :t].astype(bool))
    full = enc.encode(PROMPTS, pad_to=77)  # SD3's layout itself
    assert max_rel_err(full.tokens, states) <= RTOL and max_rel_err(full.pooled, pooled) <= RTOL
    assert enc.tokenize(PROMPTS).input_ids.shape == (3, t)
    with pytest.raises(ValueError, match="pad_to=3 is shorter"):
        enc.encode(PROMPTS, pad_to=3)
    with pytest.raises(ValueError, match="exceeds"):
        enc.encode(PROMPTS, pad_to=78)
    with pytest.raises(ValueError, match="one string"):
        enc.encode("a cat")


def test_clip_pipeline_subfolder_without_projection(clip_folders):
    folders, models = clip_folders
    assert resolve_text_encoder(folders["pipeline"]) == folders["pipeline"]
    enc = text_encoder(folders["pipeline"])  # its tokenizer is the sibling tokenizer_2/
    assert enc.tokenizer.source == os.path.join(os.path.dirname(folders["pipeline"]), "tokenizer_2")
    states, pooled, _ = _hf_clip(folders["pipeline"].replace("text_encoder_2", "tokenizer_2"), models["pipeline"],
                                 PROMPTS)
    out = enc.encode(PROMPTS, pad_to=77)
    assert out.pooled.shape == (3, 32) and max_rel_err(out.pooled, pooled) <= RTOL  # pooler_output
    assert max_rel_err(out.tokens, states) <= RTOL
    last = pe.CLIPPromptEncoder(enc.model, enc.tokenizer, layer="last").encode(PROMPTS, pad_to=77)
    ref_last, _, _ = _hf_clip(folders["pipeline"].replace("text_encoder_2", "tokenizer_2"), models["pipeline"],
                              PROMPTS, layer="last")
    assert max_rel_err(last.tokens, ref_last) <= RTOL
    first = pe.CLIPPromptEncoder(enc.model, enc.tokenizer, layer=1).encode(PROMPTS, pad_to=77)
    ref_first, _, _ = _hf_clip(folders["pipeline"].replace("text_encoder_2", "tokenizer_2"), models["pipeline"],
                               PROMPTS, layer=1)
    assert max_rel_err(first.tokens, ref_first) <= RTOL
    with pytest.raises(ValueError, match="layer=4"):
        pe.CLIPPromptEncoder(enc.model, enc.tokenizer, layer=4)


# ---- T5 ----------------------------------------------------------------------------------------
def test_t5_tokens_mask_and_masked_mean_equal_transformers(t5_folder):
    import torch
    from transformers import T5TokenizerFast
    folder, model = t5_folder
    enc = text_encoder(folder)
    assert isinstance(enc, pe.T5PromptEncoder) and enc.max_length == 256
    batch = T5TokenizerFast.from_pretrained(folder)(PROMPTS, padding="longest", max_length=256, truncation=True,
                                                    return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()
    out = enc.encode(PROMPTS)
    assert out.tokens.shape == ref.shape == (3, mask.shape[1], 32)
    np.testing.assert_array_equal(np.asarray(out.mask), mask.astype(bool))
    assert max_rel_err(out.tokens, ref) <= RTOL
    mean = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert max_rel_err(out.pooled, mean) <= RTOL
    # the mask keeps the real tokens' states (and the pooled mean) independent of the padding
    longer = enc.encode(PROMPTS, pad_to=mask.shape[1] + 5)
    assert max_rel_err(np.asarray(longer.tokens)[:, :mask.shape[1]][mask > 0], ref[mask > 0]) <= RTOL
    assert max_rel_err(longer.pooled, mean) <= RTOL
    with pytest.raises(ValueError, match="exceeds"):
        enc.encode(PROMPTS, pad_to=257)
    # padding_mask=False: diffusers' SD3 / Flux call (no mask; the padding is seen), pooled still over real tokens
    bare = pe.T5PromptEncoder(enc.model, enc.tokenizer, padding_mask=False).encode(PROMPTS)
    with torch.no_grad():
        ref_bare = model(input_ids=batch["input_ids"]).last_hidden_state.numpy()
    assert max_rel_err(bare.tokens, ref_bare) <= RTOL
    assert max_rel_err(bare.pooled, (ref_bare * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)) <= RTOL


# ---- the resolver, the loader, the registry ----------------------------------------------------
def test_resolver_accepts_clip_and_t5_folders_and_refuses_others(clip_folders, t5_folder, tmp_path):
    folders, _ = clip_folders
    for folder in (folders["projected"], folders["pipeline"], t5_folder[0]):
        assert resolve_text_encoder(folder) == folder
    (tmp_path / "clipmodel").mkdir()  # a whole CLIPModel: its text tower is read
    (tmp_path / "clipmodel" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert resolve_text_encoder(str(tmp_path / "clipmodel")) == str(tmp_path / "clipmodel")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(WeightError, match=r"model_type 'gpt2', not a text encoder.*'clip_text_model', 'clip', 't5'"):
        resolve_text_encoder(str(tmp_path / "gpt2"))
    with pytest.raises(WeightError, match="diffusers pipeline folder, not one text encoder.*text_encoder_2"):
        resolve_text_encoder(folders["pipe_root"])
    with pytest.raises(ConfigError, match="config.text.encoder=.*not a text encoder"):
        text_encoder(str(tmp_path / "gpt2"))


def test_missing_tokenizer_is_a_clear_error(clip_folders, tmp_path):
    folders, _ = clip_folders
    bare = tmp_path / "pipe" / "text_encoder"  # no tokenizer beside it, no tokenizer/ sibling
    bare.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(folders["pipeline"], name), bare / name)
    with pytest.raises(ConfigError, match=r"config.text.encoder=.*no tokenizer files.*nor in .*pipe/tokenizer\b"):
        text_encoder(str(bare))


def test_registry_wraps_a_new_family_and_refuses_unknown_modules(monkeypatch, clip_folders):
    monkeypatch.setattr(pe, "_FAMILIES", list(pe._FAMILIES))  # registrations undone after the test
    assert pe.prompt_encoder_families() == ["clip", "t5"]

    class Toy:
        pass

    with pytest.raises(WeightError, match=r"a Toy, which is no prompt encoder.*\['clip', 't5'\]"):
        pe.as_prompt_encoder(Toy(), "/somewhere")
    made = []
    pe.register_prompt_encoder(Toy, lambda module, folder: made.append((module, folder)) or "wrapped")
    toy = Toy()
    assert pe.as_prompt_encoder(toy, "/somewhere") == "wrapped" and made == [(toy, "/somewhere")]
    # a predicate, registered later, wins over the class registration
    pe.register_prompt_encoder(lambda m: isinstance(m, Toy), lambda module, folder: "by predicate", name="toy2")
    assert pe.as_prompt_encoder(toy, "x") == "by predicate"
    enc = text_encoder(clip_folders[0]["projected"])
    assert pe.as_prompt_encoder(enc, "x") is enc  # already a prompt encoder (so is the BERT TextEncoder)
    with pytest.raises(TypeError, match="class or a predicate"):
        pe.register_prompt_encoder(3, lambda m, f: m)


# ---- the digits text-to-image job with CLIP and T5 encoders --------------------------------------
def _overrides(family, clip_folders, t5_folder):
    """config overrides: the encoder folder and the MM-DiT widths it gives (tokens, pooled)."""
    folder, widths = ((clip_folders[0]["projected"], (32, 16)) if family == "clip" else (t5_folder[0], (32, 32)))
    return widths, [f"--config.text.encoder={folder}", f"--config.model.joint_attention_dim={widths[0]}",
                    f"--config.model.pooled_projection_dim={widths[1]}", "--config.train.steps=2",
                    "--config.train.checkpoint_every=2", "--config.train.sample_every=0",
                    "--config.eval.at_end=False"]


@pytest.mark.parametrize("family", ["clip", "t5"])
def test_text_to_image_task_takes_the_encoder(family, clip_folders, t5_folder):
    from unigen.training.build import build
    widths, overrides = _overrides(family, clip_folders, t5_folder)
    task = build(tiny_config(*overrides)).task
    assert task.tokens.shape[2] == widths[0] and task.pooled.shape[1] == widths[1]
    np.testing.assert_array_equal(task.null_cond()["context"], task.tokens[0])  # the empty prompt
    i = int(task.captions.held_out_ids[3, 0])
    cond = task.conditions_for_prompts([task.captions.captions[i], "a handwritten 7"])  # padded to the table's T
    assert cond["context"].shape == (2, task.context_length, widths[0]) and np.isfinite(cond["context"]).all()
    np.testing.assert_allclose(cond["context"][0], task.tokens[i], atol=1e-5)
    np.testing.assert_allclose(cond["pooled"][0], task.pooled[i], atol=1e-5)
    with pytest.raises(ConfigError, match=f"joint_attention_dim=8.*set it to {widths[0]}"):
        build(tiny_config(*overrides, "--config.model.joint_attention_dim=8"))


def test_text_to_image_job_trains_and_samples_with_a_clip_folder(clip_folders, t5_folder, tmp_path):
    """2 training steps in-process, then one prompt through infer/sample.py (the task's
    conditions_for_prompts). Only CLIP: the same run with T5 costs another ~40 s of compilation
    for the same code path (the task above checks T5's conditions)."""
    from unigen.infer.sample import main as sample_main
    from unigen.training.loop import train
    _, overrides = _overrides("clip", clip_folders, t5_folder)
    overrides += ["--config.model.num_layers=1", "--config.model.scan_layers=False"]
    workdir = str(tmp_path / "run")
    result = train(tiny_config(*overrides), workdir, progress=False)
    assert np.isfinite(result["loss"])
    out = str(tmp_path / "prompted.npz")
    assert sample_main(["--workdir", workdir, "--prompt", "a handwritten 7", "--per-prompt", "1", "--seed", "0",
                        "--out", out]) == 0
    with np.load(out) as z:
        assert z["images"].shape == (1, 8, 8, 1) and np.isfinite(z["images"]).all()
        assert list(z["prompts"]) == ["a handwritten 7"]
