"""A diffusers Stable Diffusion 3 / 3.5 pipeline folder, sampled with unigen.

    pipe = StableDiffusion3Pipeline.from_pretrained("stabilityai/stable-diffusion-3.5-medium", dtype="bfloat16")
    images = pipe("a photo of a cat", negative_prompt="blurry", height=1024, width=768, seed=0)   # PIL list

The folder is what diffusers' `StableDiffusion3Pipeline.save_pretrained` writes: model_index.json,
transformer/ (SD3Transformer2DModel -> unigen.models.mmdit.MMDiT), vae/ (AutoencoderKL, 16 latent
channels, with shift_factor), text_encoder/ and text_encoder_2/ (CLIP-L and OpenCLIP bigG, both
CLIPTextModelWithProjection), text_encoder_3/ (T5 v1.1 XXL; may be saved as None), tokenizer/,
tokenizer_2/, tokenizer_3/, scheduler/ (FlowMatchEulerDiscreteScheduler).

What diffusers' pipeline_stable_diffusion_3.py computes, and so this:
  * the prompt (`encode_prompt`): each CLIP gets the prompt tokenised to the first tokenizer's
    model_max_length (77), called without an attention mask; its per-token states are
    hidden_states[-(clip_skip + 2)] (clip_skip None: the penultimate layer), its pooled vector the
    projected end-of-text state. The two CLIPs' states are concatenated on features, zero-padded
    on features to T5's width (torch's pad with a negative amount would crop; so does this), and
    put before T5's states on the sequence: 77 + max_sequence_length tokens. T5 gets the prompt
    tokenised to max_sequence_length, also without a mask. Without text_encoder_3 its part is
    zeros (B, max_sequence_length, joint_attention_dim). pooled = [CLIP-L pooled, bigG pooled].
    prompt_2 / prompt_3 default to prompt; the negative prompt defaults to "" and its CLIPs
    always use the penultimate layer (diffusers passes clip_skip=None there);
  * num_images_per_prompt repeats each prompt's rows in place (p0, p0, p1, p1, ...);
  * guidance_scale > 1: classifier-free guidance on one doubled batch [negative; positive],
    v = v_neg + s (v_pos - v_neg);
  * the flow-match Euler loop of the scheduler (unigen/pipelines/flow_match.py) on
    timesteps = 1000 sigma, from latents (N, H/8, W/8, 16) NHWC here (diffusers' are NCHW);
  * decode latents / scaling_factor + shift_factor with the VAE, images (x / 2 + 0.5) clipped to
    [0, 1]; output_type "np": that float32 (N, H, W, 3) batch, "pil": PIL images, "latent": the
    final latents (NHWC, not decoded).
The loop and the decode are one jit (`_sample`), compiled once per (batch, size, step count,
guided or not, output "latent" or not) and kept by jax's cache, which is keyed on the networks'
graphdefs and the scheduler config: a second call of the same shapes, or another pipeline of the
same architecture, reuses it (guidance_scale, the sigma grid and the weights are traced arguments).
The text encoders are jitted the same way (`_clip_states`, `_t5_states`), once per batch size.

Over several devices (8 GPUs, or fake CPU devices):

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, mesh={"fsdp": -1}, rules="fsdp")
    images = pipe(["a cat", "a dog"], guidance_scale=5.0, seed=0)    # the images of one device

the CLIPs', T5's, transformer's and VAE's parameters are stored ZeRO-3-split over the mesh by
their logical axis names, and the encoders, loop and decode trace under those rules with the batch
split over the mesh's batch axes where it divides (components.Placement; `pipe.shard(mesh, rules)`
does the same for a pipeline already built). Each placement compiles its own functions.

Loading, the call arguments, the initial latents (from `seed`, None: fresh noise, drawn with
JAX's generator where diffusers draws from torch's; or given as `latents`, NHWC), the decode and
the output (the images themselves, not diffusers' output object) are shared with flux.py:
unigen/pipelines/components.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.errors import ConfigError, WeightError
from unigen.models.mmdit import MMDiT
from unigen.pipelines.components import (
    Placement, Shardable, as_prompts, check_output_type, component_folder, decode_images, initial_latents,
    load_clip_tokenizer, load_component, load_scheduler, load_t5_tokenizer, number, positive_int, read_model_index,
    resolve_pipeline, sequence_length, split_runtime, to_output)
from unigen.text.clip import CLIPTextModel
from unigen.text.t5 import T5Encoder
from unigen.tokenizers.autoencoder_kl import AutoencoderKL

PIPELINE_CLASS = "StableDiffusion3Pipeline"
CLIP_CLASSES = ("CLIPTextModelWithProjection",)
CLIP_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
T5_CLASSES = ("T5EncoderModel",)
T5_TOKENIZERS = ("T5TokenizerFast", "T5Tokenizer")


def _is_projected_clip(m) -> bool:
    return isinstance(m, CLIPTextModel) and m.cfg.projection_dim is not None


class StableDiffusion3Pipeline(Shardable):
    """`from_pretrained(folder)`, then `pipe(prompt, ...)` -> images (see the module docstring).
    `from_pretrained(..., mesh=, rules=)` or `pipe.shard(mesh, rules)`: over a device mesh
    (unigen.pipelines.components.Shardable)."""

    def __init__(self, transformer: MMDiT, vae, scheduler, text_encoder: CLIPTextModel, tokenizer,
                 text_encoder_2: CLIPTextModel, tokenizer_2, text_encoder_3: T5Encoder | None = None,
                 tokenizer_3=None):
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = text_encoder, text_encoder_2, text_encoder_3
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        c = transformer.cfg
        for name, enc in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
            if not _is_projected_clip(enc):
                raise ConfigError(f"{name}: SD3 needs a CLIPTextModelWithProjection (its pooled vector is the "
                                  f"projected one); got {type(enc).__name__}")
        if (text_encoder_3 is None) != (tokenizer_3 is None):
            raise ConfigError("text_encoder_3 and tokenizer_3 go together: give both, or neither (no T5: zeros)")
        if vae.cfg.latent_channels != c.in_channels:
            raise ConfigError(f"the VAE has {vae.cfg.latent_channels} latent channels but the transformer takes "
                              f"{c.in_channels}: give the SD3 VAE")
        pooled = text_encoder.cfg.projection_dim + text_encoder_2.cfg.projection_dim
        if pooled != c.pooled_projection_dim:
            raise ConfigError(f"the CLIPs' projections give {text_encoder.cfg.projection_dim} + "
                              f"{text_encoder_2.cfg.projection_dim} = {pooled} pooled features; the transformer's "
                              f"pooled_projection_dim is {c.pooled_projection_dim}")
        if text_encoder_3 is not None and text_encoder_3.cfg.d_model != c.joint_attention_dim:
            raise ConfigError(f"text_encoder_3 gives {text_encoder_3.cfg.d_model} features per token; the "
                              f"transformer's joint_attention_dim is {c.joint_attention_dim}")
        self.vae_scale_factor = 2 ** (len(vae.cfg.block_out_channels) - 1)
        self.patch_size = c.patch_size
        self.default_sample_size = c.sample_size
        self.tokenizer_max_length = tokenizer.model_max_length  # diffusers: the first tokenizer's, for both
        self._split_networks()

    def networks(self) -> dict:
        """{component name: network} (text_encoder_3 None without the T5)."""
        return dict(transformer=self.transformer, vae=self.vae, text_encoder=self.text_encoder,
                    text_encoder_2=self.text_encoder_2, text_encoder_3=self.text_encoder_3)

    def _split_networks(self) -> None:
        self._encoders = {}  # name -> (graphdef, state), split on first use
        self._graphs = (nnx.graphdef(self.transformer), nnx.graphdef(self.vae))
        self._states = (nnx.state(self.transformer), nnx.state(self.vae))

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, *, dtype: str | None = None, revision: str | None = None,
                        text_encoder_3: bool = True, mesh=None, rules="fsdp",
                        **runtime) -> "StableDiffusion3Pipeline":
        """Read a diffusers SD3 / SD3.5 pipeline folder, or a hub id's (`revision`: branch, tag or
        commit). `dtype`: the compute dtype of every network (parameters stay float32);
        `runtime`: the transformer's runtime options (attention_backend, scan_layers, remat, ...),
        of which attention_backend / scan_layers / remat also go to the text encoders and remat to
        the VAE. `text_encoder_3=False` skips the T5 even where the folder has one (diffusers'
        `text_encoder_3=None`): its part of the prompt is then zeros. `mesh` (a jax Mesh, or a
        spec such as {"fsdp": -1}; None: one device, as before) and `rules` (a preset of
        unigen.parallel.PRESETS, default "fsdp"): run over that mesh, `shard(mesh, rules)` (the
        parameters of the CLIPs, the T5, the transformer and the VAE split by their logical axis
        names; the batch split over the mesh's batch axes where it divides, else whole on every
        device; the results gathered; the images those of one device)."""
        from unigen.convert import clip, mmdit, t5  # noqa: F401  (register their from_pretrained loaders)

        folder = resolve_pipeline(path, revision=revision)
        index = read_model_index(folder, PIPELINE_CLASS)
        options, text, vae_options = split_runtime(dtype, runtime)

        def sub(name, classes, required=True):
            return component_folder(folder, index, name, classes=classes, required=required)

        transformer = load_component(sub("transformer", ("SD3Transformer2DModel",)), "transformer",
                                     kinds=("SD3Transformer2DModel",), check=lambda m: isinstance(m, MMDiT),
                                     expected="an SD3 MMDiT", **options)
        vae = load_component(sub("vae", ("AutoencoderKL",)), "vae", kinds=("AutoencoderKL",),
                             check=lambda m: isinstance(m, AutoencoderKL), expected="a KL autoencoder", **vae_options)
        encoders = [load_component(sub(name, CLIP_CLASSES), name, kinds=("clip_text_model",), check=_is_projected_clip,
                                   expected="a CLIPTextModelWithProjection", **text)
                    for name in ("text_encoder", "text_encoder_2")]
        tokenizers = [load_clip_tokenizer(sub(name, CLIP_TOKENIZERS), name) for name in ("tokenizer", "tokenizer_2")]
        t5_model = t5_tokenizer = None
        t5_dir = sub("text_encoder_3", T5_CLASSES, required=False)
        if t5_dir is not None and text_encoder_3:
            t5_tok_dir = sub("tokenizer_3", T5_TOKENIZERS, required=False)
            if t5_tok_dir is None:
                raise WeightError(f"{folder}: text_encoder_3/ is there but tokenizer_3 is not; the T5 needs its "
                                  f"tokenizer (or load with text_encoder_3=False)")
            t5_model = load_component(t5_dir, "text_encoder_3", kinds=("t5",), check=lambda m: isinstance(m, T5Encoder),
                                      expected="a T5 encoder", **text)
            t5_tokenizer = load_t5_tokenizer(t5_tok_dir, "tokenizer_3")
        pipe = cls(transformer, vae, load_scheduler(folder, index), encoders[0], tokenizers[0], encoders[1],
                   tokenizers[1], t5_model, t5_tokenizer)
        return pipe if mesh is None else pipe.shard(mesh, rules)

    # ---- the prompt ---------------------------------------------------------------------------
    def _encoder(self, name: str):
        """(graphdef, state) of text encoder `name`, split once."""
        if name not in self._encoders:
            module = getattr(self, name)
            self._encoders[name] = (nnx.graphdef(module), nnx.state(module))
        return self._encoders[name]

    def _clip(self, index: int, prompts: list[str], n: int, clip_skip):
        """(states (B n, 77, D), pooled (B n, P)) of CLIP `index` (0: text_encoder, 1: text_encoder_2)."""
        tokenizer = (self.tokenizer, self.tokenizer_2)[index]
        name = ("text_encoder", "text_encoder_2")[index]
        if clip_skip is not None:
            layers = getattr(self, name).cfg.num_layers
            if not (isinstance(clip_skip, int) and not isinstance(clip_skip, bool) and 0 <= clip_skip < layers):
                raise ConfigError(f"clip_skip={clip_skip!r}: give an integer in [0, {layers - 1}] ({name} has "
                                  f"{layers} layers)")
        ids = tokenizer(prompts, max_length=self.tokenizer_max_length, padding="max_length", truncation=True).input_ids
        graph, state = self._encoder(name)
        states, pooled = _clip_states(graph, state, self.placement.batch(np.asarray(ids, np.int32)),
                                      0 if clip_skip is None else clip_skip, self.placement)
        return jnp.repeat(states, n, axis=0), jnp.repeat(pooled, n, axis=0)

    def _t5(self, prompts: list[str], n: int, max_sequence_length: int):
        if self.text_encoder_3 is None:  # diffusers: zeros of the transformer's context width
            return jnp.zeros((len(prompts) * n, max_sequence_length, self.transformer.cfg.joint_attention_dim),
                             jnp.float32)
        ids = self.tokenizer_3(prompts, max_length=max_sequence_length, padding="max_length", truncation=True).input_ids
        graph, state = self._encoder("text_encoder_3")
        return jnp.repeat(_t5_states(graph, state, self.placement.batch(np.asarray(ids, np.int32)), self.placement),
                          n, axis=0)

    def _embed(self, prompts, prompts_2, prompts_3, n, clip_skip, max_sequence_length):
        states_1, pooled_1 = self._clip(0, prompts, n, clip_skip)
        states_2, pooled_2 = self._clip(1, prompts_2, n, clip_skip)
        t5 = self._t5(prompts_3, n, max_sequence_length)
        clip = jnp.concatenate([states_1, states_2], axis=-1).astype(jnp.float32)
        width = t5.shape[-1]
        # torch.nn.functional.pad to T5's width: zeros on the right, or a crop if CLIP is wider
        clip = jnp.pad(clip, ((0, 0), (0, 0), (0, max(width - clip.shape[-1], 0))))[..., :width]
        return (jnp.concatenate([clip, t5.astype(jnp.float32)], axis=-2),
                jnp.concatenate([pooled_1, pooled_2], axis=-1).astype(jnp.float32))

    def encode_prompt(self, prompt=None, prompt_2=None, prompt_3=None, negative_prompt=None, negative_prompt_2=None,
                      negative_prompt_3=None, *, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, clip_skip: int | None = None,
                      max_sequence_length: int = 256, prompt_embeds=None, negative_prompt_embeds=None,
                      pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None):
        """(prompt_embeds (N, 77 + max_sequence_length, joint_attention_dim), negative_prompt_embeds
        or None, pooled_prompt_embeds (N, pooled_projection_dim), negative_pooled_prompt_embeds or
        None), N = len(prompts) * num_images_per_prompt, float32 jax arrays, as diffusers'
        `encode_prompt` builds them (see the module docstring). The negatives are None without
        `do_classifier_free_guidance`.

        Precomputed `prompt_embeds` + `pooled_prompt_embeds` (instead of prompt) and
        `negative_prompt_embeds` + `negative_pooled_prompt_embeds` (instead of negative_prompt)
        are used as given (checked; N = their rows, num_images_per_prompt must then be 1: repeat
        the rows yourself); a missing negative is encoded from the negative prompts."""
        n = positive_int(num_images_per_prompt, "num_images_per_prompt")
        msl = sequence_length(max_sequence_length)
        if prompt_embeds is not None:
            given = [name for name, v in (("prompt", prompt), ("prompt_2", prompt_2), ("prompt_3", prompt_3))
                     if v is not None]
            if given:
                raise ConfigError(f"pass {given[0]} or prompt_embeds, not both")
            if n != 1:
                raise ConfigError(f"num_images_per_prompt={n} with prompt_embeds: the embeddings are used as given; "
                                  f"repeat their rows instead (np.repeat(embeds, {n}, axis=0))")
            embeds, pooled = self._given(prompt_embeds, pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds")
            b = embeds.shape[0]
        elif prompt is None:
            raise ConfigError("give prompt (a string or a list of strings) or prompt_embeds with pooled_prompt_embeds")
        else:
            if pooled_prompt_embeds is not None:
                raise ConfigError("pooled_prompt_embeds goes with prompt_embeds: pass both, or prompt alone")
            prompts = as_prompts(prompt)
            b = len(prompts)

        if prompt_embeds is None:
            # diffusers: `prompt_2 or prompt`, so an empty string falls back too
            prompts_2 = as_prompts(prompt_2 or prompts, "prompt_2", b)
            prompts_3 = as_prompts(prompt_3 or prompts, "prompt_3", b)
            embeds, pooled = self._embed(prompts, prompts_2, prompts_3, n, clip_skip, msl)
        if not do_classifier_free_guidance:
            return embeds, None, pooled, None
        if negative_prompt_embeds is not None:
            given = [name for name, v in (("negative_prompt", negative_prompt),
                                          ("negative_prompt_2", negative_prompt_2),
                                          ("negative_prompt_3", negative_prompt_3)) if v is not None]
            if given:
                raise ConfigError(f"pass {given[0]} or negative_prompt_embeds, not both")
            neg_embeds, neg_pooled = self._given(negative_prompt_embeds, negative_pooled_prompt_embeds,
                                                 "negative_prompt_embeds", "negative_pooled_prompt_embeds")
            if neg_embeds.shape != embeds.shape or neg_pooled.shape != pooled.shape:
                raise ConfigError(f"negative_prompt_embeds {neg_embeds.shape} / negative_pooled_prompt_embeds "
                                  f"{neg_pooled.shape} must have the prompt's shapes {embeds.shape} / {pooled.shape}")
            return embeds, neg_embeds, pooled, neg_pooled
        if negative_pooled_prompt_embeds is not None:
            raise ConfigError("negative_pooled_prompt_embeds goes with negative_prompt_embeds: pass both")
        # diffusers: "" by default, _2 / _3 fall back to it, a string is used for every prompt
        negative = negative_prompt or ""
        negative_2, negative_3 = negative_prompt_2 or negative, negative_prompt_3 or negative
        negs = [[p] * b if isinstance(p, str) else as_prompts(p, what, b) for p, what in
                ((negative, "negative_prompt"), (negative_2, "negative_prompt_2"), (negative_3, "negative_prompt_3"))]
        # diffusers encodes the negatives with clip_skip=None whatever the call's clip_skip
        neg_embeds, neg_pooled = self._embed(*negs, n, None, msl)
        if neg_embeds.shape != embeds.shape:
            raise ConfigError(f"the negative prompts give embeddings {neg_embeds.shape}, the given prompt_embeds are "
                              f"{embeds.shape}: encode both with the same max_sequence_length")
        return embeds, neg_embeds, pooled, neg_pooled

    def _given(self, embeds, pooled, name, pooled_name):
        """Precomputed (embeds, pooled) as float32 arrays, checked against the transformer's widths."""
        if pooled is None:
            raise ConfigError(f"{name} needs {pooled_name} too (diffusers' rule): pass the pooled vectors "
                              f"encode_prompt returned with them")
        c = self.transformer.cfg
        embeds, pooled = jnp.asarray(embeds, jnp.float32), jnp.asarray(pooled, jnp.float32)
        if embeds.ndim != 3 or embeds.shape[-1] != c.joint_attention_dim:
            raise ConfigError(f"{name} of shape {embeds.shape}: expected (N, tokens, {c.joint_attention_dim})")
        if pooled.shape != (embeds.shape[0], c.pooled_projection_dim):
            raise ConfigError(f"{pooled_name} of shape {pooled.shape}: expected ({embeds.shape[0]}, "
                              f"{c.pooled_projection_dim})")
        return embeds, pooled

    # ---- sampling -----------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) in pixels, checked: multiples of vae_scale_factor * patch_size."""
        step = self.vae_scale_factor * self.patch_size
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0 or v % step:
                raise ConfigError(f"{name}={v!r}: must be a positive multiple of {step} (the VAE's factor "
                                  f"{self.vae_scale_factor} x the transformer's patch {self.patch_size})")
        return int(height), int(width)

    def __call__(self, prompt=None, prompt_2=None, prompt_3=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 7.0, negative_prompt=None,
                 negative_prompt_2=None, negative_prompt_3=None, num_images_per_prompt: int = 1,
                 seed: int | None = None, latents=None, output_type: str = "pil", clip_skip: int | None = None,
                 max_sequence_length: int = 256, mu: float | None = None, prompt_embeds=None,
                 negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None):
        """Images for `prompt` (a string or a list), diffusers' defaults: 28 steps, guidance 7.0,
        height / width the transformer's sample_size x the VAE factor (1024 for SD3). `latents`:
        the initial noise (N, h, w, C) NHWC, N = prompts x num_images_per_prompt; else drawn from
        `seed` (None: fresh noise). `mu`: the dynamic shift, for schedulers with use_dynamic_shifting
        (otherwise computed from the image size as diffusers does). `prompt_embeds` & co.:
        precomputed embeddings instead of the prompts (see `encode_prompt`)."""
        default = self.default_sample_size * self.vae_scale_factor
        height, width = self.check_size(default if height is None else height, default if width is None else width)
        check_output_type(output_type)
        scale = number(guidance_scale, "guidance_scale")
        guided = scale > 1.0  # diffusers' do_classifier_free_guidance
        embeds, neg_embeds, pooled, neg_pooled = self.encode_prompt(
            prompt, prompt_2, prompt_3, negative_prompt, negative_prompt_2, negative_prompt_3,
            num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=guided, clip_skip=clip_skip,
            max_sequence_length=max_sequence_length, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
        n = embeds.shape[0]
        if guided:
            embeds, pooled = jnp.concatenate([neg_embeds, embeds]), jnp.concatenate([neg_pooled, pooled])
        c = self.transformer.cfg
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        x = initial_latents((n, h, w, c.in_channels), seed, latents)
        sigmas, timesteps = self.scheduler.schedule(
            num_inference_steps, image_seq_len=(h // self.patch_size) * (w // self.patch_size), mu=mu)
        place = self.placement.batch  # the rows split over the mesh's batch devices where they divide
        out = _sample(self._graphs, self.scheduler, output_type != "latent", guided, self.placement, self._states,
                      place(x), place(embeds), place(pooled), jnp.asarray(sigmas), jnp.asarray(timesteps),
                      jnp.float32(scale))
        return to_output(out, output_type)


# ---- the compiled parts: module-level jits keyed on the (hashable) graphdefs, configs and placement, so
# pipelines of the same architecture share them and each shape compiles once per process (and per mesh and
# rule table: each traces under its placement's rules, and gathers its results to every device).
@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _clip_states(graph, state, ids, clip_skip: int, placement: Placement):
    """(hidden_states[-(clip_skip + 2)], projected pooled) of a CLIP, called without a mask as diffusers does."""
    with placement.use_rules():
        out = nnx.merge(graph, state)(ids, clip_skip=clip_skip)
        return placement.gather((out.layer_state, out.text_embeds))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _t5_states(graph, state, ids, placement: Placement):
    """T5's last hidden state; diffusers calls text_encoder_3 without an attention mask, so pads are seen."""
    with placement.use_rules():
        return placement.gather(nnx.merge(graph, state)(ids).last_hidden_state)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sample(graphs, scheduler, decode: bool, guided: bool, placement: Placement, states, x, context, pooled, sigmas,
            timesteps, scale):
    """The Euler loop from x (N, h, w, C) and, with `decode`, the VAE decode to images in [0, 1].
    Guided: `context` / `pooled` hold [negative; positive] (2N rows)."""
    with placement.use_rules():
        return placement.gather(_euler_and_decode(graphs, scheduler, decode, guided, states, x, context, pooled,
                                                  sigmas, timesteps, scale))


def _euler_and_decode(graphs, scheduler, decode, guided, states, x, context, pooled, sigmas, timesteps, scale):
    (t_graph, v_graph), (t_state, v_state) = graphs, states
    model = nnx.merge(t_graph, t_state)

    def velocity(x, t):
        if not guided:
            return model(x, jnp.broadcast_to(t, (x.shape[0],)), context, pooled)
        v = model(jnp.concatenate([x, x]), jnp.broadcast_to(t, (2 * x.shape[0],)), context, pooled)
        v_neg, v_pos = jnp.split(v, 2)
        return v_neg + scale * (v_pos - v_neg)  # diffusers' order of operations

    latents = scheduler.sample(velocity, x, sigmas, timesteps=timesteps)
    return decode_images(nnx.merge(v_graph, v_state), latents) if decode else latents
