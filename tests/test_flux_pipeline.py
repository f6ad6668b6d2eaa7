"""unigen.pipelines.flux.FluxPipeline against diffusers' FluxPipeline on tiny random folders.

Each folder is written by diffusers' `FluxPipeline.save_pretrained`: a random FluxTransformer2DModel
(with guidance_embeds for the dev-like folder, without for the schnell-like one), an AutoencoderKL
with 16 latent channels and a shift_factor, a CLIPTextModel, a T5EncoderModel, CLIP and T5
tokenizers (test_sd3_pipeline's, trained on a small corpus), and a FlowMatchEulerDiscreteScheduler (dev-like: dynamic
shifting; schnell-like: shift 1).
(a) encode_prompt equals diffusers' (T5 states, CLIP pooled, text ids) <= 1e-5 relative;
(b) images from the same initial latents equal diffusers' (output_type="np") <= 1e-4 absolute, for
    a non-square size, both folders; the sampling function is compiled once per shape;
(c) bad folders and bad call arguments fail with errors naming what is wrong.
"""

import json
import os
import shutil
import warnings

import numpy as np
import pytest

from test_sd3_pipeline import _clip_tokenizer_folders, _randomize, _t5_tokenizer_folder, max_rel_err
from unigen.errors import ConfigError, WeightError
from unigen.pipelines.flux import FluxPipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

# the long prompt is cut to CLIP's 77 and to SEQ T5 tokens on purpose (both libraries)
pytestmark = [pytest.mark.filterwarnings("ignore:prompt .* longer than the T5 limit"),
              pytest.mark.filterwarnings("ignore:prompt .* CLIP tokens long")]
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed, " * 6]
CLIP_WIDTH, T5_WIDTH = 32, 24
HEIGHT, WIDTH = 12, 20     # pixels; the VAE's factor is 2, so multiples of 4: latent 6 x 10, 3 x 5 tokens
SEQ = 16                   # max_sequence_length in the tests
STEPS = 3


# ---- building the folders --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(CLIP tokenizer folder, its vocab, T5 tokenizer folder, its size): SD3's test tokenizers
    (CLIP-L's layout, pad <|endoftext|>; T5's Unigram layout)."""
    root = tmp_path_factory.mktemp("flux_tokenizers")
    clip_dirs, clip_vocab = _clip_tokenizer_folders(root)
    t5_dir, t5_vocab = _t5_tokenizer_folder(root)
    return clip_dirs["tokenizer"], clip_vocab, t5_dir, t5_vocab


def build_pipeline(root, tokenizers, *, dev: bool, seed: int):
    """diffusers' FluxPipeline from tiny random parts, saved to root/<name>; (pipe, folder)."""
    clip_dir, clip_vocab, t5_dir, t5_vocab = tokenizers
    torch.manual_seed(seed)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH, guidance_embeds=dev,
        axes_dims_rope=(4, 6, 6)).eval()
    _randomize(transformer, seed, 0.1)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=32,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False).eval()
    with torch.no_grad():  # GroupNorms away from (1, 0), so a misplaced scale or bias shows
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
    eos = clip_vocab["<|endoftext|>"]
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(clip_vocab), hidden_size=CLIP_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=eos - 1,
        eos_token_id=eos, pad_token_id=eos)).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=t5_vocab, d_model=T5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False)).eval()
    if dev:  # FLUX.1-dev's scheduler config: dynamic shifting on the image sequence length
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096)
    else:  # FLUX.1-schnell's: no shift
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0,
                                                              use_dynamic_shifting=False)
    pipe = diffusers.FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, text_encoder_2=t5, transformer=transformer,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(clip_dir),
        tokenizer_2=transformers.T5TokenizerFast.from_pretrained(t5_dir))
    pipe.set_progress_bar_config(disable=True)
    folder = os.path.join(root, "dev" if dev else "schnell")
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, tokenizers):
    root = str(tmp_path_factory.mktemp("flux_pipelines"))
    return {name: build_pipeline(root, tokenizers, dev=name == "dev", seed=i)
            for i, name in enumerate(("dev", "schnell"))}


@pytest.fixture(scope="module")
def ours(pipelines):
    return {name: FluxPipeline.from_pretrained(folder) for name, (_, folder) in pipelines.items()}


# ---- (a) prompts -----------------------------------------------------------------------------------
def test_encode_prompt_matches_diffusers(pipelines, ours):
    ref_pipe, _ = pipelines["dev"]
    pipe = ours["dev"]
    # a long second prompt is cut to max_sequence_length; the first is cut to CLIP's 77 tokens
    cases = [dict(prompt=PROMPTS, prompt_2=None, num_images_per_prompt=1),
             dict(prompt=PROMPTS[::-1], prompt_2=["a dog", PROMPTS[1]], num_images_per_prompt=2),
             dict(prompt="a photo of a cat", prompt_2=None, num_images_per_prompt=1)]
    for case in cases:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ref_pipe.encode_prompt(**case, device="cpu", max_sequence_length=SEQ)
            got = pipe.encode_prompt(**case, max_sequence_length=SEQ)
        for name, r, g in zip(("prompt_embeds", "pooled_prompt_embeds", "text_ids"), ref, got):
            assert tuple(g.shape) == tuple(r.shape), (name, case)
            assert max_rel_err(g, r.numpy()) <= 1e-5, (name, case)


def test_encode_prompt_default_length(pipelines, ours):
    states, pooled, ids = ours["schnell"].encode_prompt(["x", "y"])
    assert states.shape == (2, 512, T5_WIDTH) and pooled.shape == (2, CLIP_WIDTH) and ids.shape == (512, 3)


# ---- (b) images ------------------------------------------------------------------------------------
def reference_images(ref_pipe, packed, **kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref_pipe(latents=torch.from_numpy(packed), output_type="np", **kwargs).images


@pytest.mark.parametrize("name", ["dev", "schnell"])
def test_images_match_diffusers(pipelines, ours, name):
    ref_pipe, _ = pipelines[name]
    pipe = ours[name]
    call = dict(prompt=PROMPTS, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=4.5,
                max_sequence_length=SEQ, num_images_per_prompt=1)
    lh, lw = HEIGHT // 2, WIDTH // 2
    nchw = np.random.RandomState(3).randn(2, 16, lh, lw).astype(np.float32)
    packed = diffusers.FluxPipeline._pack_latents(torch.from_numpy(nchw), 2, 16, lh, lw).numpy()
    want = reference_images(ref_pipe, packed, **call)
    assert want.shape == (2, HEIGHT, WIDTH, 3)
    # diffusers' packed layout, and unigen's NHWC layout of the same latents
    for latents in (packed, nchw.transpose(0, 2, 3, 1)):
        got = pipe(**call, latents=latents, output_type="np")
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-4, (name, np.abs(got - want).max())
    assert pipe.traces == 1  # the same shapes: compiled once
    assert 0.0 <= got.min() and got.max() <= 1.0 and got.std() > 1e-3
    if name == "dev":  # the guidance scale is an input of the compiled loop, and it matters
        other = pipe(**{**call, "guidance_scale": 1.0}, latents=packed, output_type="np")
        assert pipe.traces == 1 and np.abs(other - got).max() > 1e-6
        want_other = reference_images(ref_pipe, packed, **{**call, "guidance_scale": 1.0})
        assert np.abs(other - want_other).max() <= 1e-4
        # a custom sigma grid (diffusers' `sigmas=`), shifted as the default one: same shapes, no new trace
        sigmas = [1.0, 0.55, 0.2]
        custom = pipe(**call, latents=packed, sigmas=sigmas, output_type="np")
        assert pipe.traces == 1
        assert np.abs(custom - reference_images(ref_pipe, packed, **call, sigmas=sigmas)).max() <= 1e-4


def test_seed_rounding_and_pil(ours):
    pipe = ours["schnell"]
    call = dict(prompt="a cat", num_inference_steps=2, max_sequence_length=SEQ)
    a = pipe(**call, height=HEIGHT, width=WIDTH, seed=1, output_type="np")
    b = pipe(**call, height=HEIGHT, width=WIDTH, seed=1, output_type="np")
    c = pipe(**call, height=HEIGHT, width=WIDTH, seed=2, output_type="np")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6
    traces = pipe.traces
    with pytest.warns(UserWarning, match="rounded down to 12x20"):  # diffusers' rounding to multiples of 4
        d = pipe(**call, height=HEIGHT + 3, width=WIDTH + 1, seed=1, output_type="np")
    np.testing.assert_array_equal(a, d)
    images = pipe(**call, height=HEIGHT, width=WIDTH, seed=1)  # "pil", the default
    assert pipe.traces == traces
    assert len(images) == 1 and images[0].size == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(np.asarray(images[0]), (a[0] * 255).round().astype(np.uint8))
    # "latent": the final latents unpacked, NHWC, as SD3's; seed=None: fresh noise each call (diffusers
    # without a generator)
    fresh = [pipe(**call, height=HEIGHT, width=WIDTH, output_type="latent") for _ in range(2)]
    assert fresh[0].shape == (1, HEIGHT // 2, WIDTH // 2, 16) and fresh[0].dtype == np.float32
    assert np.abs(fresh[0] - fresh[1]).max() > 1e-3


def test_a_swapped_scheduler_is_the_one_that_steps(ours):
    # pipe.scheduler is read at each call, for the grid and for the compiled loop's steps (a static argument):
    # another shift gives other images from the same latents; the original one gives the first images again.
    import dataclasses
    pipe = ours["schnell"]
    call = dict(prompt="a cat", num_inference_steps=3, max_sequence_length=SEQ, height=HEIGHT, width=WIDTH,
                seed=5, output_type="np")
    first = pipe(**call)
    original = pipe.scheduler
    try:
        pipe.scheduler = dataclasses.replace(original, shift=3.0)
        traces = pipe.traces
        shifted = pipe(**call)
        assert pipe.traces == traces + 1 and np.abs(shifted - first).max() > 1e-3
    finally:
        pipe.scheduler = original
    np.testing.assert_array_equal(pipe(**call), first)


# ---- (c) errors ------------------------------------------------------------------------------------
def test_bad_call_arguments(ours):
    pipe = ours["dev"]
    call = dict(prompt="a cat", height=HEIGHT, width=WIDTH, num_inference_steps=2, max_sequence_length=SEQ)
    bad = [
        (dict(max_sequence_length=513), "max_sequence_length=513"),
        (dict(height=2), "height=2"),
        (dict(width=0), "width=0"),
        (dict(num_inference_steps=0), "num_inference_steps=0"),
        (dict(prompt=5), "prompt=5"),
        (dict(prompt=[]), r"prompt=\[\]"),
        (dict(prompt_2=["a", "b"]), "prompt_2 has 2"),
        (dict(output_type="pt"), "output_type='pt'"),
        (dict(latents=np.zeros((1, 7, 64), np.float32)), r"latents of shape \(1, 7, 64\).*or \(1, 15, 64\) packed"),
        (dict(latents=np.zeros((1, 15, 64), np.float32), seed=0), "seed= or latents="),
        (dict(num_images_per_prompt=0), "num_images_per_prompt=0"),
        (dict(guidance_scale="high"), "guidance_scale='high'"),
        (dict(seed=1.5), "seed=1.5"),
    ]
    for change, match in bad:
        with pytest.raises(ConfigError, match=match):
            pipe(**{**call, **change})


def _copy(folder, tmp_path, name):
    out = str(tmp_path / name)
    shutil.copytree(folder, out)
    return out


def _edit_json(path, **changes):
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    with open(path, "w") as f:
        json.dump(data, f)


def test_bad_folders(pipelines, tmp_path):
    _, folder = pipelines["schnell"]
    with pytest.raises(WeightError, match="no model_index.json"):
        FluxPipeline.from_pretrained(str(tmp_path))
    f = _copy(folder, tmp_path, "wrong_pipeline")
    _edit_json(os.path.join(f, "model_index.json"), _class_name="StableDiffusion3Pipeline")
    with pytest.raises(WeightError, match="StableDiffusion3Pipeline"):
        FluxPipeline.from_pretrained(f)
    f = _copy(folder, tmp_path, "no_entry")
    _edit_json(os.path.join(f, "model_index.json"), text_encoder_2=[None, None])
    with pytest.raises(WeightError, match="no 'text_encoder_2' component"):
        FluxPipeline.from_pretrained(f)
    f = _copy(folder, tmp_path, "wrong_class")
    _edit_json(os.path.join(f, "model_index.json"), transformer=["diffusers", "SD3Transformer2DModel"])
    with pytest.raises(WeightError, match="component 'transformer' is a SD3Transformer2DModel"):
        FluxPipeline.from_pretrained(f)
    f = _copy(folder, tmp_path, "no_folder")
    shutil.rmtree(os.path.join(f, "vae"))
    with pytest.raises(WeightError, match="no vae/ folder"):
        FluxPipeline.from_pretrained(f)
    f = _copy(folder, tmp_path, "wrong_config_class")
    _edit_json(os.path.join(f, "transformer", "config.json"), _class_name="SD3Transformer2DModel")
    with pytest.raises(WeightError, match="FluxTransformer2DModel"):
        FluxPipeline.from_pretrained(f)
    f = _copy(folder, tmp_path, "clip_is_t5")
    shutil.rmtree(os.path.join(f, "text_encoder"))
    shutil.copytree(os.path.join(f, "text_encoder_2"), os.path.join(f, "text_encoder"))
    with pytest.raises(WeightError, match="text_encoder/config.json: model_type 't5'"):
        FluxPipeline.from_pretrained(f)
    f = _copy(folder, tmp_path, "no_tokenizer_files")
    os.remove(os.path.join(f, "tokenizer_2", "tokenizer.json"))
    with pytest.raises(WeightError, match="tokenizer_2"):
        FluxPipeline.from_pretrained(f)
