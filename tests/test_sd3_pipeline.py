"""unigen.pipelines.sd3 against diffusers' StableDiffusion3Pipeline on a tiny random pipeline folder.

The folder is built with the diffusers / transformers classes and written by diffusers'
`StableDiffusion3Pipeline.save_pretrained`: SD3Transformer2DModel (SD3.5's qk RMS norm and one
dual-attention block), an AutoencoderKL with 16 latent channels, SD3's scaling / shift factors and
no quant convs, two CLIPTextModelWithProjection of different widths (CLIP-L's quick_gelu and legacy
eos id 2; bigG's gelu and "!" pad token), a T5EncoderModel wider than both CLIPs together (so the
zero padding shows), tokenizers trained here with `tokenizers`, FlowMatchEulerDiscreteScheduler
with shift 3.0. Then:
  (a) encode_prompt equals diffusers' for several prompts / negative prompts / prompt_2 / prompt_3 /
      clip_skip / num_images_per_prompt (<= 1e-5 relative);
  (b) images from the same initial latents equal diffusers' output_type="np" (<= 1e-4 absolute) at a
      non-square size with guidance; the loop + decode compiles once for repeated calls;
  (c) a folder saved without text_encoder_3 / tokenizer_3 (T5 part zeros) still matches;
  (d) bad sizes, inputs and folders are ConfigError / WeightError naming the field or component.
"""

import json
import os
import shutil
import warnings

import numpy as np
import pytest

from unigen.errors import ConfigError, WeightError
from unigen.pipelines.sd3 import StableDiffusion3Pipeline, _sample

# the tiny T5 vocabulary splits words finely: prompts pass MSL tokens and are truncated (both libraries)
pytestmark = pytest.mark.filterwarnings("ignore:prompt .* longer than the T5 limit")
RTOL_EMBEDS = 1e-5
ATOL_IMAGES = 1e-4
MSL = 12  # max_sequence_length in the tests (diffusers' default 256 works the same, only slower)
CORPUS = [
    "a photo of a cat sitting on a mat", "the quick brown fox jumps over the lazy dog",
    "an astronaut riding a horse on the moon, digital art", "a painting of a city at night in the rain",
    "portrait of a woman with red hair, oil on canvas", "a bowl of fruit on a wooden table",
    "blurry, low quality, watermark", "mountains and a lake at sunrise!",
] * 10
LONG = "a very long prompt about a cat on a mat " * 12  # over 77 CLIP tokens and over MSL T5 tokens


def _references():
    return pytest.importorskip("torch"), pytest.importorskip("diffusers"), pytest.importorskip("transformers")


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _byte_symbols():
    """GPT-2 / CLIP byte-level symbols: printable Latin-1 bytes as themselves, the rest from 256 on."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = {b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in kept)}
    return [chr(b) for b in kept] + [shifted[b] for b in range(256) if b not in kept]


def _clip_tokenizer_folders(root):
    """SD3's tokenizer/ (pad <|endoftext|>) and tokenizer_2/ (pad "!") layouts on a BPE trained here."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    trainer = Tokenizer(BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    trainer.normalizer = normalizers.Lowercase()
    trainer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer.train_from_iterator(CORPUS, BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   end_of_word_suffix="</w>", show_progress=False))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trainer.to_str())["model"]["merges"]]
    symbols = _byte_symbols()
    vocab = {}
    for token in symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [
            "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))

    def token(content, normalized):
        return dict(content=content, lstrip=False, normalized=normalized, rstrip=False, single_word=False,
                    special=True)

    folders = {}
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        decoder = {str(vocab["<|startoftext|>"]): token("<|startoftext|>", True),
                   str(vocab["<|endoftext|>"]): token("<|endoftext|>", False)}
        if pad == "!":
            decoder = {"0": token("!", False), **decoder}
        config = dict(add_prefix_space=False, added_tokens_decoder=decoder, bos_token="<|startoftext|>",
                      clean_up_tokenization_spaces=True, do_lower_case=True, eos_token="<|endoftext|>",
                      errors="replace", model_max_length=77, pad_token=pad, tokenizer_class="CLIPTokenizer",
                      unk_token="<|endoftext|>")
        folder = root / f"src_{name}"
        folder.mkdir()
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                           encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        folders[name] = str(folder)
    return folders, vocab


def _t5_tokenizer_folder(root):
    """A Unigram tokenizer laid out as T5's: <pad>=0, </s>=1, <unk>=2, WhitespaceSplit + Metaspace."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS * 3, trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    folder = root / "src_tokenizer_3"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
         "model_max_length": 512}))
    return str(folder), tok.get_vocab_size()


def _randomize(module, seed, scale, skip=("pos_embed",)):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not any(s in name for s in skip):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _perturb_norms(module, seed):
    """LayerNorm / GroupNorm scales and biases away from 1 / 0, so a misplaced one shows."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(diffusers pipe with T5, its folder, diffusers pipe without T5, its folder)."""
    torch, diffusers, transformers = _references()
    root = tmp_path_factory.mktemp("sd3_pipeline")
    clip_dirs, vocab = _clip_tokenizer_folders(root)
    t5_dir, t5_vocab = _t5_tokenizer_folder(root)
    torch.manual_seed(0)
    eot = vocab["<|endoftext|>"]
    clip_l = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=16, eos_token_id=2, bos_token_id=0,
        pad_token_id=1))
    clip_g = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=40, intermediate_size=80, num_hidden_layers=3, num_attention_heads=5,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=24, eos_token_id=eot,
        bos_token_id=vocab["<|startoftext|>"], pad_token_id=0))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=t5_vocab, d_model=96, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0))
    for i, m in enumerate((clip_l, clip_g, t5)):
        _perturb_norms(m, i)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=16, pooled_projection_dim=40,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,))
    _randomize(transformer, 3, 0.05)  # adaLN-Zero / zero-init paths would hide mistakes otherwise
    # the text paths stronger, so that the prompt (and so guidance) visibly changes the images
    _randomize(transformer.context_embedder, 5, 0.3)
    _randomize(transformer.time_text_embed.text_embedder, 6, 0.3)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=16,
        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    _perturb_norms(vae, 4)
    for m in (clip_l, clip_g, t5, transformer, vae):
        m.eval()
    parts = dict(transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                 text_encoder=clip_l, text_encoder_2=clip_g,
                 tokenizer=transformers.CLIPTokenizer.from_pretrained(clip_dirs["tokenizer"]),
                 tokenizer_2=transformers.CLIPTokenizer.from_pretrained(clip_dirs["tokenizer_2"]))
    t5_tok = transformers.T5TokenizerFast.from_pretrained(t5_dir)
    pipe = diffusers.StableDiffusion3Pipeline(**parts, text_encoder_3=t5, tokenizer_3=t5_tok)
    bare = diffusers.StableDiffusion3Pipeline(**parts, text_encoder_3=None, tokenizer_3=None)
    path, bare_path = root / "pipe", root / "pipe_no_t5"
    pipe.save_pretrained(str(path))
    bare.save_pretrained(str(bare_path))
    return pipe, str(path), bare, str(bare_path)


@pytest.fixture(scope="module")
def ours(folders):
    return StableDiffusion3Pipeline.from_pretrained(folders[1])


@pytest.fixture(scope="module")
def ours_no_t5(folders):
    return StableDiffusion3Pipeline.from_pretrained(folders[3])


# ---------------------------------------------------------------- (a) the prompt
PROMPT_CASES = [
    dict(prompt="a photo of a cat", negative_prompt="blurry, low quality"),
    dict(prompt=["a photo of a cat", "an astronaut riding a horse!"], negative_prompt=["watermark", ""]),
    dict(prompt=["mountains at sunrise", "a bowl of fruit"], prompt_2=["a painting of a city", "a cat"],
         prompt_3=["oil on canvas", "digital art"], negative_prompt="blurry", negative_prompt_3="low quality"),
    dict(prompt=[LONG, ""], negative_prompt=None, clip_skip=1, num_images_per_prompt=2),
]


def _as_numpy(t):
    return None if t is None else t.detach().cpu().numpy()


@pytest.mark.parametrize("case", range(len(PROMPT_CASES)))
def test_encode_prompt_matches_diffusers(folders, ours, case):
    torch, _, _ = _references()
    kwargs = dict(PROMPT_CASES[case])
    pipe = folders[0]
    with torch.no_grad():
        ref = pipe.encode_prompt(kwargs.pop("prompt"), kwargs.pop("prompt_2", None), kwargs.pop("prompt_3", None),
                                 do_classifier_free_guidance=True, max_sequence_length=MSL, **kwargs)
    kwargs = dict(PROMPT_CASES[case])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long prompt's truncation warnings
        got = ours.encode_prompt(**kwargs, max_sequence_length=MSL)
    n = len([kwargs["prompt"]] if isinstance(kwargs["prompt"], str) else kwargs["prompt"]) * kwargs.get(
        "num_images_per_prompt", 1)
    assert got[0].shape == (n, 77 + MSL, 96) and got[2].shape == (n, 40)
    for name, r, g in zip(("prompt_embeds", "negative_prompt_embeds", "pooled", "negative_pooled"), ref, got):
        r = _as_numpy(r)
        assert r.shape == g.shape, name
        assert max_rel_err(g, r) <= RTOL_EMBEDS, (name, max_rel_err(g, r))
    # the padding between the CLIP features (32 + 40) and T5's width (96) is zeros; T5's tokens are not
    assert np.all(np.asarray(got[0])[:, :77, 72:] == 0) and np.abs(np.asarray(got[0])[:, 77:]).max() > 0


def test_encode_prompt_without_guidance_and_t5(folders, ours_no_t5):
    torch, _, _ = _references()
    with torch.no_grad():
        ref = folders[2].encode_prompt("a cat", None, None, do_classifier_free_guidance=False,
                                       max_sequence_length=MSL)
    got = ours_no_t5.encode_prompt("a cat", do_classifier_free_guidance=False, max_sequence_length=MSL)
    assert got[1] is None and got[3] is None and ref[1] is None
    assert max_rel_err(got[0], _as_numpy(ref[0])) <= RTOL_EMBEDS
    assert max_rel_err(got[2], _as_numpy(ref[2])) <= RTOL_EMBEDS
    assert np.all(np.asarray(got[0])[:, 77:] == 0)  # no T5: zeros of (B, MSL, joint_attention_dim)


# ---------------------------------------------------------------- (b, c) images
def _diffusers_images(pipe, noise, **kwargs):
    torch, _, _ = _references()
    with torch.no_grad():
        return pipe(latents=torch.from_numpy(noise.copy()), output_type="np", max_sequence_length=MSL,
                    **kwargs).images


IMAGE_KW = dict(prompt=["a photo of a cat", "a painting of a city"], negative_prompt=["blurry", "watermark"],
                height=16, width=24, num_inference_steps=4, guidance_scale=4.5)


@pytest.mark.parametrize("with_t5", [True, False])
def test_images_match_diffusers(folders, ours, ours_no_t5, with_t5):
    pipe = folders[0] if with_t5 else folders[2]
    unigen_pipe = ours if with_t5 else ours_no_t5
    noise = np.random.RandomState(7).randn(2, 16, 8, 12).astype(np.float32)  # NCHW, h = 16/2, w = 24/2
    ref = _diffusers_images(pipe, noise, **IMAGE_KW)
    got = unigen_pipe(**IMAGE_KW, latents=noise.transpose(0, 2, 3, 1), output_type="np",
                      max_sequence_length=MSL)
    assert got.shape == ref.shape == (2, 16, 24, 3)
    unclipped = (ref > 0.01) & (ref < 0.99)
    assert unclipped.mean() > 0.5, "the test VAE saturates: the comparison would be weak"
    assert np.abs(got - ref).max() <= ATOL_IMAGES, np.abs(got - ref).max()
    # not a shared trivial output: another guidance scale gives other images, and it reuses the
    # compiled loop + decode of these shapes (the scale is traced)
    compiled = _sample._cache_size()
    other = unigen_pipe(**{**IMAGE_KW, "guidance_scale": 1.5}, latents=noise.transpose(0, 2, 3, 1),
                        output_type="np", max_sequence_length=MSL)
    assert _sample._cache_size() == compiled
    assert np.abs(other - got).max() > 100 * ATOL_IMAGES
    # precomputed embeddings (diffusers' prompt_embeds & co.) give the same images
    embeds = unigen_pipe.encode_prompt(IMAGE_KW["prompt"], negative_prompt=IMAGE_KW["negative_prompt"],
                                       max_sequence_length=MSL)
    kw = {k: v for k, v in IMAGE_KW.items() if k not in ("prompt", "negative_prompt")}
    again = unigen_pipe(**kw, prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1],
                        pooled_prompt_embeds=embeds[2], negative_pooled_prompt_embeds=embeds[3],
                        latents=noise.transpose(0, 2, 3, 1), output_type="np", max_sequence_length=MSL)
    np.testing.assert_array_equal(again, got)


def test_images_without_guidance_match_diffusers(folders, ours):
    # guidance_scale <= 1: no negative batch, one network call per step (diffusers' do_classifier_free_guidance)
    noise = np.random.RandomState(8).randn(2, 16, 8, 12).astype(np.float32)
    kw = {**IMAGE_KW, "guidance_scale": 1.0}
    ref = _diffusers_images(folders[0], noise, **kw)
    got = ours(**kw, latents=noise.transpose(0, 2, 3, 1), output_type="np", max_sequence_length=MSL)
    assert np.abs(got - ref).max() <= ATOL_IMAGES, np.abs(got - ref).max()


def test_seed_pil_and_latent_outputs(ours):
    kw = dict(prompt="a photo of a cat", num_inference_steps=2, max_sequence_length=MSL, guidance_scale=1.0)
    a = ours(**kw, seed=3, output_type="np")
    b = ours(**kw, seed=3, output_type="np")
    assert a.shape == (1, 16, 16, 3) and np.array_equal(a, b)  # default size: sample_size x VAE factor
    assert not np.array_equal(a, ours(**kw, seed=4, output_type="np"))
    pil = ours(**kw, seed=3)
    assert len(pil) == 1 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    assert np.array_equal(np.asarray(pil[0]), np.round(a[0] * 255).astype(np.uint8))
    lat = ours(**kw, seed=3, output_type="latent")
    assert lat.shape == (1, 8, 8, 16) and lat.dtype == np.float32
    # seed=None: fresh noise each call, as diffusers without a generator (unigen.pipelines.components)
    assert not np.array_equal(ours(**kw, output_type="latent"), ours(**kw, output_type="latent"))


# ---------------------------------------------------------------- (d) errors
def test_bad_inputs_are_clear(ours):
    kw = dict(prompt="a cat", num_inference_steps=2, max_sequence_length=MSL)
    with pytest.raises(ConfigError, match="height=18: must be a positive multiple of 4"):
        ours(**kw, height=18, width=16)
    with pytest.raises(ConfigError, match="width"):
        ours(**kw, height=16, width=0)
    with pytest.raises(ConfigError, match=r"latents of shape \(1, 16, 8, 8\).*channels last"):
        ours(**kw, height=16, width=16, latents=np.zeros((1, 16, 8, 8), np.float32))
    with pytest.raises(ConfigError, match="seed= or latents="):
        ours(**kw, seed=0, latents=np.zeros((1, 8, 8, 16), np.float32))
    with pytest.raises(ConfigError, match="negative_prompt has 2"):
        ours.encode_prompt("a cat", negative_prompt=["a", "b"], max_sequence_length=MSL)
    with pytest.raises(ConfigError, match="output_type"):
        ours(**kw, output_type="tensor")
    with pytest.raises(ConfigError, match="max_sequence_length=600"):
        ours.encode_prompt("a cat", max_sequence_length=600)
    with pytest.raises(ConfigError, match="prompt="):
        ours.encode_prompt(3)
    with pytest.raises(ConfigError, match="clip_skip=5"):
        ours.encode_prompt("a cat", clip_skip=5, max_sequence_length=MSL)
    with pytest.raises(ConfigError, match="num_inference_steps=0"):
        ours(**{**kw, "num_inference_steps": 0})
    embeds, _, pooled, _ = ours.encode_prompt("a cat", do_classifier_free_guidance=False, max_sequence_length=MSL)
    with pytest.raises(ConfigError, match="pass prompt or prompt_embeds, not both"):
        ours.encode_prompt("a cat", prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    with pytest.raises(ConfigError, match="prompt_embeds needs pooled_prompt_embeds"):
        ours.encode_prompt(prompt_embeds=embeds)
    with pytest.raises(ConfigError, match="give prompt"):
        ours.encode_prompt()
    with pytest.raises(ConfigError, match=r"prompt_embeds of shape \(1, 89, 95\)"):
        ours.encode_prompt(prompt_embeds=embeds[..., :95], pooled_prompt_embeds=pooled)
    with pytest.raises(ConfigError, match="negative_prompt_embeds needs negative_pooled_prompt_embeds"):
        ours.encode_prompt(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=embeds)
    with pytest.raises(ConfigError, match="num_images_per_prompt=2 with prompt_embeds"):
        ours.encode_prompt(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_images_per_prompt=2)


def _edited_copy(src, dst, edit_index=None, remove=None):
    shutil.copytree(src, dst)
    if edit_index is not None:
        path = os.path.join(dst, "model_index.json")
        with open(path) as f:
            index = json.load(f)
        edit_index(index)
        with open(path, "w") as f:
            json.dump(index, f)
    if remove is not None:
        target = os.path.join(dst, remove)
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    return str(dst)


def test_bad_folders_name_the_component(folders, tmp_path):
    src = folders[1]
    with pytest.raises(WeightError, match="no model_index.json"):
        StableDiffusion3Pipeline.from_pretrained(os.path.join(src, "vae"))
    with pytest.raises(WeightError, match="_class_name 'FluxPipeline'"):
        StableDiffusion3Pipeline.from_pretrained(
            _edited_copy(src, tmp_path / "a", lambda i: i.update(_class_name="FluxPipeline")))
    with pytest.raises(WeightError, match="component 'text_encoder_2' is a CLIPTextModel;"):
        StableDiffusion3Pipeline.from_pretrained(_edited_copy(
            src, tmp_path / "b", lambda i: i.update(text_encoder_2=["transformers", "CLIPTextModel"])))
    with pytest.raises(WeightError, match="lists 'vae'.*no vae/ folder"):
        StableDiffusion3Pipeline.from_pretrained(_edited_copy(src, tmp_path / "c", remove="vae"))
    with pytest.raises(WeightError, match="no 'transformer' component"):
        StableDiffusion3Pipeline.from_pretrained(_edited_copy(src, tmp_path / "d", lambda i: i.pop("transformer")))
    with pytest.raises(WeightError, match="tokenizer_3 is not"):
        StableDiffusion3Pipeline.from_pretrained(_edited_copy(
            src, tmp_path / "e", lambda i: i.update(tokenizer_3=[None, None])))
    with pytest.raises(WeightError, match="component text_encoder/"):
        StableDiffusion3Pipeline.from_pretrained(_edited_copy(
            src, tmp_path / "f", remove="text_encoder/model.safetensors"))
