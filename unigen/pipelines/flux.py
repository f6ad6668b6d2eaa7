"""A released diffusers Flux.1 pipeline folder (FLUX.1-dev, FLUX.1-schnell), sampled with unigen.

    pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", dtype="bfloat16")
    images = pipe("a cat holding a sign", height=768, width=1360, seed=0)     # list of PIL images
    images = pipe(["a", "b"], num_inference_steps=4, output_type="np")       # (2, H, W, 3) in [0, 1]

The folder is what diffusers' `FluxPipeline.save_pretrained` writes: model_index.json and
  transformer/     FluxTransformer2DModel   (unigen.models.flux, loaded by unigen.convert.flux)
  vae/             AutoencoderKL            16 latent channels, scaling_factor and shift_factor
  text_encoder/    CLIPTextModel            CLIP-L; only its pooled vector is used
  text_encoder_2/  T5EncoderModel           T5 v1.1 XXL; its last hidden states are the context
  tokenizer/       CLIPTokenizer            tokenizer_2/  T5TokenizerFast (tokenizer.json)
  scheduler/       FlowMatchEulerDiscreteScheduler (unigen.pipelines.flow_match)

What diffusers' `FluxPipeline.__call__` (diffusers/pipelines/flux/pipeline_flux.py) does, and so
this does too:
  * the prompt: CLIP-L's pooled output of `prompt` (padded to the tokenizer's model_max_length,
    77, truncated) and T5's last hidden state of `prompt_2` (default `prompt`) padded to
    `max_sequence_length` (at most 512). Neither encoder gets an attention mask: diffusers passes
    the ids alone, so T5's pad tokens are attended to, and that changes the states. Text ids are
    zeros; each prompt's embeddings are repeated `num_images_per_prompt` times in a row;
  * the size: `height` / `width` default to 128 * vae_scale_factor (1024 for the released VAE) and
    are rounded *down* to a multiple of 2 * vae_scale_factor, as diffusers does (it logs a warning;
    here a Python warning names the size used). A size that rounds to 0 is an error;
  * latents: N(0, I) in NHWC (B, h, w, 16) drawn from `seed`, packed 2 x 2 into tokens
    (unigen.models.flux.pack_latents, diffusers' `_pack_latents` order), or the caller's
    `latents`, packed (B, h/2 * w/2, 64) as diffusers takes them or NHWC (B, h, w, 16). Latents
    take the compute dtype, as diffusers' take the text encoder's;
  * the grid: sigmas linspace(1, 1/N, N), shifted with mu from the image sequence length (h/2 *
    w/2) when the scheduler config says use_dynamic_shifting (dev), statically otherwise (schnell:
    shift 1, none); the transformer gets timesteps / 1000;
  * guidance: a transformer with guidance_embeds (dev) gets `guidance_scale` as its distilled
    guidance input, one per image; one without (schnell) gets none and `guidance_scale` is
    ignored. There is no classifier-free guidance (diffusers' optional `true_cfg_scale` with a
    negative prompt is not offered);
  * decode: latents unpacked, z / scaling_factor + shift_factor, the VAE's decoder, then
    (x / 2 + 0.5) clipped to [0, 1] (diffusers' VaeImageProcessor.postprocess).
The Euler loop and the decode are ONE jitted function; jax compiles it once per (batch, text
length, latent size, step count) and keeps it; the guidance scale is a traced input. The prompt
encoders run in a second jitted function.

Output: `output_type="np"`: float32 numpy (N, H, W, 3) in [0, 1]; "pil": a list of PIL images
(diffusers' numpy_to_pil rounding). unigen returns the images themselves (as DiTPipeline does),
not diffusers' FluxPipelineOutput.
"""

from __future__ import annotations

import os
import secrets
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.hub import resolve
from unigen.models.flux import Flux, latent_image_ids, pack_latents, text_ids, unpack_latents
from unigen.pipelines.flow_match import linear_sigmas, scheduler_from_config
from unigen.text.clip import CLIPTextModel
from unigen.text.clip_tokenizer import CLIPTokenizer
from unigen.text.t5 import T5Encoder
from unigen.text.t5_tokenizer import T5Tokenizer
from unigen.tokenizers.autoencoder_kl import AutoencoderKL

MODEL_INDEX = "model_index.json"
PIPELINE_CLASS = "FluxPipeline"
# component -> the classes model_index.json may name for it (what diffusers' FluxPipeline.__init__
# is typed with; the tokenizers' slow and fast names are the same files to unigen)
COMPONENTS = {
    "transformer": ("FluxTransformer2DModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("T5EncoderModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "tokenizer_2": ("T5TokenizerFast", "T5Tokenizer"),
    "scheduler": ("FlowMatchEulerDiscreteScheduler",),
}
MAX_SEQUENCE_LENGTH = 512     # diffusers' check_inputs refuses more
DEFAULT_SAMPLE_SIZE = 128     # diffusers' FluxPipeline.default_sample_size (latent pixels)
OUTPUT_TYPES = ("pil", "np")
TIME_SCALE = 1000.0           # the pipeline hands the transformer timesteps / 1000


# ---- reading the folder ---------------------------------------------------------------------------------
def read_flux_index(folder: str) -> dict:
    """model_index.json of a FluxPipeline folder, each component checked to be present (an entry
    and a subfolder) and of a class this pipeline reads; a WeightError names the first that is not."""
    path = os.path.join(folder, MODEL_INDEX)
    index = read_json(path, missing=f"{folder}: no {MODEL_INDEX}; a pipeline folder (diffusers save_pretrained) "
                                    f"has one")
    if index.get("_class_name") != PIPELINE_CLASS:
        raise WeightError(f"{path}: _class_name {index.get('_class_name')!r}; this reads {PIPELINE_CLASS!r}")
    for name, classes in COMPONENTS.items():
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None):
            raise WeightError(f"{path}: component {name!r} is missing (entry {entry!r}); a FluxPipeline needs "
                              f"{name}/ holding a {' or '.join(classes)}")
        if entry[1] not in classes:
            raise WeightError(f"{path}: component {name!r} is a {entry[1]!r}; a FluxPipeline's {name} is a "
                              f"{' or '.join(classes)}")
        if not os.path.isdir(os.path.join(folder, name)):
            raise WeightError(f"{folder}: no {name}/ folder, though {MODEL_INDEX} lists it ({entry[1]})")
    return index


def _component_config(folder: str, name: str) -> tuple[str, dict]:
    sub = os.path.join(folder, name)
    return sub, read_json(os.path.join(sub, "config.json"),
                          missing=f"{sub}: no config.json, so the pipeline's {name} cannot be read")


def load_flux_transformer(folder: str, **runtime) -> Flux:
    from unigen.convert.flux import load_diffusers

    sub, config = _component_config(folder, "transformer")
    if config.get("_class_name") != "FluxTransformer2DModel":
        raise WeightError(f"{sub}/config.json: _class_name {config.get('_class_name')!r}; the transformer of a "
                          f"FluxPipeline is a 'FluxTransformer2DModel'")
    return load_diffusers(sub, config, **runtime)


def load_flux_vae(folder: str, dtype: str) -> AutoencoderKL:
    from unigen.convert.autoencoder_kl import load_diffusers

    sub, config = _component_config(folder, "vae")
    if config.get("_class_name") != "AutoencoderKL":
        raise WeightError(f"{sub}/config.json: _class_name {config.get('_class_name')!r}; the vae of a "
                          f"FluxPipeline is an 'AutoencoderKL'")
    return load_diffusers(sub, config, dtype=dtype)


def load_clip_text_encoder(folder: str, name: str, dtype: str) -> CLIPTextModel:
    from unigen.convert.clip import load_clip_text

    sub, config = _component_config(folder, name)
    if config.get("model_type") != "clip_text_model":
        raise WeightError(f"{sub}/config.json: model_type {config.get('model_type')!r}; the pipeline's {name} is a "
                          f"CLIP text model ('clip_text_model')")
    return load_clip_text(sub, config, dtype=dtype)


def load_t5_text_encoder(folder: str, name: str, dtype: str) -> T5Encoder:
    from unigen.convert.t5 import load_t5_encoder

    sub, config = _component_config(folder, name)
    if config.get("model_type") not in ("t5", "umt5"):
        raise WeightError(f"{sub}/config.json: model_type {config.get('model_type')!r}; the pipeline's {name} is a "
                          f"T5 encoder ('t5')")
    return load_t5_encoder(sub, dtype=dtype)


def check_flux_parts(transformer: Flux, vae: AutoencoderKL, clip: CLIPTextModel, t5: T5Encoder) -> None:
    """The components' widths agree (else a WeightError naming the two fields)."""
    t = transformer.cfg
    pairs = (
        (t.in_channels, 4 * vae.cfg.latent_channels,
         f"transformer in_channels={t.in_channels} is not 4 x the vae's latent_channels={vae.cfg.latent_channels} "
         f"(2 x 2 packed latents)"),
        (t.out_features, t.in_channels,
         f"transformer out_channels={t.out_features} differs from in_channels={t.in_channels}"),
        (t.pooled_projection_dim, clip.cfg.hidden_size,
         f"transformer pooled_projection_dim={t.pooled_projection_dim} is not text_encoder's hidden_size="
         f"{clip.cfg.hidden_size} (CLIP's pooled vector)"),
        (t.joint_attention_dim, t5.cfg.d_model,
         f"transformer joint_attention_dim={t.joint_attention_dim} is not text_encoder_2's d_model={t5.cfg.d_model}"),
    )
    for got, want, why in pairs:
        if got != want:
            raise WeightError(f"the pipeline's components do not fit together: {why}")


# ---- call arguments -------------------------------------------------------------------------------------
def prompt_list(prompt, name: str = "prompt") -> list[str]:
    """A str or a non-empty list of str -> list (diffusers' check_inputs accepts these two)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ConfigError(f"{name} must be a string or a non-empty list of strings; got {prompt!r}")


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}={value!r}: must be a positive integer")
    return int(value)


def rounded_latent_size(height, width, vae_scale_factor: int) -> tuple[int, int]:
    """(latent h, latent w) for an image size, as diffusers' prepare_latents: each side rounded down
    to a multiple of 2 * vae_scale_factor (with a warning when that changes it), then / vae_scale_factor."""
    multiple = 2 * vae_scale_factor
    sides = []
    for name, side in (("height", height), ("width", width)):
        side = positive_int(side, name)
        if side < multiple:
            raise ConfigError(f"{name}={side}: Flux images are at least {multiple} pixels (2 x 2 latent patches of "
                              f"a {vae_scale_factor}x VAE)")
        sides.append(side)
    h, w = (2 * (s // multiple) for s in sides)
    if (h * vae_scale_factor, w * vae_scale_factor) != tuple(sides):
        warnings.warn(f"height and width must be multiples of {multiple}; {sides[0]}x{sides[1]} was rounded down to "
                      f"{h * vae_scale_factor}x{w * vae_scale_factor}, as diffusers' FluxPipeline does", stacklevel=3)
    return h, w


def images_as(images: np.ndarray, output_type: str):
    """float32 NHWC in [0, 1] -> the requested output (diffusers' VaeImageProcessor.postprocess)."""
    if output_type == "np":
        return images
    from PIL import Image

    pixels = (images * 255).round().astype(np.uint8)
    return [Image.fromarray(p[..., 0], mode="L") if p.shape[-1] == 1 else Image.fromarray(p) for p in pixels]


# ---- the pipeline ---------------------------------------------------------------------------------------
class FluxPipeline:
    """`from_pretrained(folder)` then `pipe(prompt, ...)` -> images (see the module docstring)."""

    def __init__(self, transformer: Flux, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 text_encoder_2: T5Encoder, tokenizer_2: T5Tokenizer, scheduler):
        check_flux_parts(transformer, vae, text_encoder, text_encoder_2)
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.vae_scale_factor = vae.downsample_factor
        self.latent_channels = vae.cfg.latent_channels
        self.guidance_embeds = transformer.cfg.guidance_embeds
        self.dtype = jnp.dtype(transformer.cfg.dtype)
        graphs, states = zip(*(nnx.split(m) for m in (transformer, vae, text_encoder, text_encoder_2)))
        self._states = dict(zip(("transformer", "vae", "clip", "t5"), states))
        self._encode = jax.jit(self._make_encode(graphs[2], graphs[3]))
        self._sample = jax.jit(self._make_sample(graphs[0], graphs[1]), static_argnames=("grid",))
        self.traces = 0  # times the sampling function was traced (a new shape); tests read it

    @classmethod
    def from_pretrained(cls, path, *, dtype: str = "float32", revision: str | None = None,
                        **transformer_options) -> "FluxPipeline":
        """Read a diffusers FluxPipeline folder, or a hub id's (unigen/hub.py: the local cache first,
        else a download; `revision` a branch, tag or commit). `dtype`: the compute dtype of every
        network (parameters stay float32). `transformer_options`: the transformer's runtime options
        (attention_backend, attention_options, scan_layers, remat)."""
        folder = resolve(path, revision=revision)
        read_flux_index(folder)
        transformer = load_flux_transformer(folder, dtype=dtype, **transformer_options)
        vae = load_flux_vae(folder, dtype)
        clip = load_clip_text_encoder(folder, "text_encoder", dtype)
        t5 = load_t5_text_encoder(folder, "text_encoder_2", dtype)
        tokenizer = CLIPTokenizer.from_folder(os.path.join(folder, "tokenizer"))
        tokenizer_2 = T5Tokenizer.from_folder(os.path.join(folder, "tokenizer_2"))
        scheduler = scheduler_from_config(os.path.join(folder, "scheduler"))
        return cls(transformer, vae, clip, tokenizer, t5, tokenizer_2, scheduler)

    # ---- the two compiled functions ---------------------------------------------------------------------
    @staticmethod
    def _make_encode(clip_graph, t5_graph):
        def encode(clip_state, t5_state, clip_ids, t5_ids):
            # no attention masks: diffusers' _get_clip_prompt_embeds / _get_t5_prompt_embeds pass ids only
            pooled = nnx.merge(clip_graph, clip_state)(clip_ids).pooled
            states = nnx.merge(t5_graph, t5_state)(t5_ids).last_hidden_state
            return states, pooled
        return encode

    def _make_sample(self, t_graph, v_graph):
        scheduler, vae_cfg = self.scheduler, self.vae.cfg

        def sample(states, prompt_embeds, pooled, latents, sigmas, model_t, guidance, grid):
            self.traces += 1  # runs only while tracing
            lh, lw = grid
            flux = nnx.merge(t_graph, states["transformer"])
            img_ids = latent_image_ids(lh // 2, lw // 2)
            txt_ids = text_ids(prompt_embeds.shape[1])

            def velocity(x, t):
                return flux(x, prompt_embeds, pooled, t, img_ids, txt_ids, guidance).astype(x.dtype)

            x = scheduler.sample(velocity, latents, sigmas, timesteps=model_t)
            z = unpack_latents(x, lh, lw)
            z = z / vae_cfg.scaling_factor + vae_cfg.shift_factor
            decoded = nnx.merge(v_graph, states["vae"]).decode(z)
            return jnp.clip(decoded.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)
        return sample

    # ---- prompts --------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, prompt_2=None, num_images_per_prompt: int = 1,
                      max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        """(prompt_embeds (B*n, max_sequence_length, joint_attention_dim) from T5, pooled (B*n, 768)
        from CLIP, text_ids (max_sequence_length, 3) zeros), as diffusers' `encode_prompt`."""
        prompts = prompt_list(prompt)
        prompts_2 = prompts if prompt_2 is None else prompt_list(prompt_2, "prompt_2")
        if len(prompts_2) != len(prompts):
            raise ConfigError(f"prompt_2 has {len(prompts_2)} entries and prompt {len(prompts)}; give one each")
        n = positive_int(num_images_per_prompt, "num_images_per_prompt")
        length = positive_int(max_sequence_length, "max_sequence_length")
        if length > MAX_SEQUENCE_LENGTH:
            raise ConfigError(f"max_sequence_length={length}: at most {MAX_SEQUENCE_LENGTH} (diffusers' limit; "
                              f"FLUX.1-dev uses 512, schnell 256)")
        clip_ids = self.tokenizer(prompts, padding="max_length", truncation=True).input_ids
        t5_ids = self.tokenizer_2(prompts_2, max_length=length, padding="max_length", truncation=True).input_ids
        states, pooled = self._encode(self._states["clip"], self._states["t5"], jnp.asarray(clip_ids),
                                      jnp.asarray(t5_ids))
        if n > 1:  # each prompt's rows together, as diffusers' repeat + view
            states, pooled = jnp.repeat(states, n, axis=0), jnp.repeat(pooled, n, axis=0)
        return states, pooled, jnp.asarray(text_ids(length))

    # ---- sampling -------------------------------------------------------------------------------------
    def _initial_latents(self, latents, seed, batch: int, grid: tuple[int, int]):
        lh, lw = grid
        c = self.latent_channels
        packed_shape = (batch, (lh // 2) * (lw // 2), 4 * c)
        if latents is None:
            seed = secrets.randbits(31) if seed is None else seed
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ConfigError(f"seed={seed!r}: give an integer (or None for a fresh one)")
            noise = jax.random.normal(jax.random.PRNGKey(int(seed)), (batch, lh, lw, c), jnp.float32)
            return pack_latents(noise).astype(self.dtype)
        x = jnp.asarray(np.asarray(latents, np.float32))
        if x.ndim == 4 and x.shape == (batch, lh, lw, c):
            x = pack_latents(x)
        elif x.shape != packed_shape:
            raise ConfigError(f"latents shape {tuple(x.shape)}: expected packed {packed_shape} (diffusers' layout) or "
                              f"NHWC {(batch, lh, lw, c)} for {batch} image(s) of {lh * self.vae_scale_factor}x"
                              f"{lw * self.vae_scale_factor}")
        return x.astype(self.dtype)

    def __call__(self, prompt, prompt_2=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5, num_images_per_prompt: int = 1,
                 seed: int | None = None, latents=None, sigmas=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                 output_type: str = "pil"):
        """Images for `prompt` (see the module docstring). `seed` draws the initial latents (None: a
        fresh seed); `latents` gives them instead. `sigmas`: a custom grid of num_inference_steps
        values (diffusers' `sigmas`), shifted as the default one is."""
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type={output_type!r}: use one of {list(OUTPUT_TYPES)}")
        default = DEFAULT_SAMPLE_SIZE * self.vae_scale_factor
        grid = rounded_latent_size(default if height is None else height, default if width is None else width,
                                   self.vae_scale_factor)
        steps = positive_int(num_inference_steps, "num_inference_steps")
        prompt_embeds, pooled, _ = self.encode_prompt(prompt, prompt_2, num_images_per_prompt, max_sequence_length)
        batch = prompt_embeds.shape[0]
        x = self._initial_latents(latents, seed, batch, grid)
        image_seq_len = x.shape[1]
        sigma_grid, timesteps = self.scheduler.schedule(
            steps, image_seq_len=image_seq_len, sigmas=linear_sigmas(steps) if sigmas is None else sigmas)
        # diffusers: t.expand(B).to(latents.dtype) / 1000, divided in the latents' dtype
        model_t = np.asarray(timesteps).astype(self.dtype) / np.asarray(TIME_SCALE, self.dtype)
        if self.guidance_embeds:
            if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating)):
                raise ConfigError(f"guidance_scale={guidance_scale!r}: give a number (FLUX.1-dev: 3.5)")
            guidance = jnp.full((batch,), guidance_scale, jnp.float32)
        else:
            guidance = None  # schnell: no guidance input; diffusers ignores guidance_scale too
        images = self._sample(self._states, prompt_embeds.astype(self.dtype), pooled.astype(self.dtype), x,
                              jnp.asarray(sigma_grid), jnp.asarray(model_t), guidance, grid=grid)
        return images_as(np.asarray(images, np.float32), output_type)
