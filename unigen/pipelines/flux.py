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
  * latents: N(0, I) in NHWC (B, h, w, 16) drawn from `seed` (None: fresh), packed 2 x 2 into tokens
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
length, latent size, step count, decoded or "latent") and keeps it; the guidance scale is a traced input. The prompt
encoders run in a second jitted function.

Over several devices: `FluxPipeline.from_pretrained(folder, mesh={"fsdp": -1}, rules="fsdp")` (or
`pipe.shard(mesh, rules)`) stores the CLIP's, T5's, transformer's and VAE's parameters split by
their logical axis names (ZeRO-3 for "fsdp"), traces both functions under those rules with the
batch split over the mesh's batch axes where it divides (else whole on every device), and gathers
the results: the images of one device (components.Placement; each placement compiles its own).

Loading, the call arguments (`seed=None`: fresh noise), the initial latents, the decode and the
output (`output_type` "pil" / "np" / "latent", the images themselves rather than diffusers'
FluxPipelineOutput) are shared with sd3.py: unigen/pipelines/components.py. "latent" gives the
final latents unpacked, NHWC (B, h, w, 16), as SD3's; diffusers' packed ones are pack_latents(x).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.errors import ConfigError, WeightError
from unigen.models.flux import Flux, latent_image_ids, pack_latents, text_ids, unpack_latents
from unigen.pipelines.components import (
    MAX_SEQUENCE_LENGTH, Shardable, as_prompts, check_output_type, component_folder, decode_images, initial_latents,
    load_clip_tokenizer, load_component, load_scheduler, load_t5_tokenizer, number, positive_int, read_model_index,
    resolve_pipeline, sequence_length, split_runtime, to_output)
from unigen.pipelines.flow_match import linear_sigmas
from unigen.text.clip import CLIPTextModel
from unigen.text.clip_tokenizer import CLIPTokenizer
from unigen.text.t5 import T5Encoder
from unigen.text.t5_tokenizer import T5Tokenizer
from unigen.tokenizers.autoencoder_kl import AutoencoderKL

PIPELINE_CLASS = "FluxPipeline"
# component -> the classes model_index.json may name for it (what diffusers' FluxPipeline.__init__
# is typed with; the tokenizers' slow and fast names are the same files to unigen), and the
# config.json `_class_name` / `model_type` of each network
COMPONENTS = {
    "transformer": ("FluxTransformer2DModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("T5EncoderModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "tokenizer_2": ("T5TokenizerFast", "T5Tokenizer"),
}
KINDS = {"transformer": ("FluxTransformer2DModel",), "vae": ("AutoencoderKL",),
         "text_encoder": ("clip_text_model",), "text_encoder_2": ("t5",)}
DEFAULT_SAMPLE_SIZE = 128     # diffusers' FluxPipeline.default_sample_size (latent pixels)
TIME_SCALE = 1000.0           # the pipeline hands the transformer timesteps / 1000


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


def rounded_latent_size(height, width, vae_scale_factor: int) -> tuple[int, int]:
    """(latent h, latent w) for an image size, as diffusers' prepare_latents: each side rounded down
    to a multiple of 2 * vae_scale_factor (with a warning when that changes it), then / vae_scale_factor.
    (diffusers' SD3 refuses such sizes instead; sd3.py follows it.)"""
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


# ---- the pipeline ---------------------------------------------------------------------------------------
class FluxPipeline(Shardable):
    """`from_pretrained(folder)` then `pipe(prompt, ...)` -> images (see the module docstring).
    `from_pretrained(..., mesh=, rules=)` or `pipe.shard(mesh, rules)`: over a device mesh
    (unigen.pipelines.components.Shardable)."""

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
        graphs = [nnx.graphdef(m) for m in (transformer, vae, text_encoder, text_encoder_2)]
        self._split_networks()
        # the placement is static: a mesh / rule table traces its own functions (unigen.pipelines.components)
        self._encode = jax.jit(self._make_encode(graphs[2], graphs[3]), static_argnames=("placement",))
        self._sample = jax.jit(self._make_sample(graphs[0], graphs[1]),
                               static_argnames=("grid", "decode", "placement", "scheduler"))
        self.traces = 0  # times the sampling function was traced (a new shape); tests read it

    def networks(self) -> dict:
        """{component name: network}."""
        return dict(transformer=self.transformer, vae=self.vae, text_encoder=self.text_encoder,
                    text_encoder_2=self.text_encoder_2)

    def _split_networks(self) -> None:
        self._states = {key: nnx.state(m) for key, m in
                        zip(("transformer", "vae", "clip", "t5"), self.networks().values())}

    @classmethod
    def from_pretrained(cls, path, *, dtype: str | None = None, revision: str | None = None, mesh=None,
                        rules="fsdp", **runtime) -> "FluxPipeline":
        """Read a diffusers FluxPipeline folder, or a hub id's (unigen/hub.py: the local cache first,
        else a download; `revision` a branch, tag or commit). `dtype`: the compute dtype of every
        network (parameters stay float32; None: float32). `runtime`: the transformer's runtime
        options (attention_backend, attention_options, scan_layers, remat), of which
        attention_backend / scan_layers / remat also go to the text encoders and remat to the VAE.
        `mesh` (a jax Mesh, or a spec such as {"fsdp": -1}; None: one device, as before) and
        `rules` (a preset of unigen.parallel.PRESETS, default "fsdp"): run over that mesh,
        `shard(mesh, rules)` (every network's parameters split by their logical axis names; the
        batch split over the mesh's batch axes where it divides, else whole on every device; the
        results gathered; the images those of one device)."""
        from unigen.convert import clip, flux, t5  # noqa: F401  (register their from_pretrained loaders)

        folder = resolve_pipeline(path, revision=revision)
        index = read_model_index(folder, PIPELINE_CLASS)
        subs = {name: component_folder(folder, index, name, classes=classes) for name, classes in COMPONENTS.items()}
        options = dict(zip(("transformer", "text", "vae"), split_runtime(dtype, runtime)))

        def load(name, module_class, what, opts):
            return load_component(subs[name], name, kinds=KINDS[name], check=lambda m: isinstance(m, module_class),
                                  expected=what, **opts)

        transformer = load("transformer", Flux, "a Flux transformer", options["transformer"])
        vae = load("vae", AutoencoderKL, "a KL autoencoder", options["vae"])
        clip_model = load("text_encoder", CLIPTextModel, "a CLIP text model", options["text"])
        t5_model = load("text_encoder_2", T5Encoder, "a T5 encoder", options["text"])
        tokenizer = load_clip_tokenizer(subs["tokenizer"], "tokenizer")
        tokenizer_2 = load_t5_tokenizer(subs["tokenizer_2"], "tokenizer_2")
        pipe = cls(transformer, vae, clip_model, tokenizer, t5_model, tokenizer_2, load_scheduler(folder, index))
        return pipe if mesh is None else pipe.shard(mesh, rules)

    # ---- the two compiled functions ---------------------------------------------------------------------
    @staticmethod
    def _make_encode(clip_graph, t5_graph):
        def encode(clip_state, t5_state, clip_ids, t5_ids, placement):
            with placement.use_rules():
                # no attention masks: diffusers' _get_clip_prompt_embeds / _get_t5_prompt_embeds pass ids only
                pooled = nnx.merge(clip_graph, clip_state)(clip_ids).pooled
                states = nnx.merge(t5_graph, t5_state)(t5_ids).last_hidden_state
                return placement.gather((states, pooled))
        return encode

    def _make_sample(self, t_graph, v_graph):
        # The scheduler is a static argument (a hashable config), so a swapped `pipe.scheduler` is the
        # one that steps, not the one the pipeline was built with.
        def sample(states, prompt_embeds, pooled, latents, sigmas, model_t, guidance, grid, decode, placement,
                   scheduler):
            self.traces += 1  # runs only while tracing
            with placement.use_rules():
                return placement.gather(euler_and_decode(states, prompt_embeds, pooled, latents, sigmas, model_t,
                                                         guidance, grid, decode, scheduler))

        def euler_and_decode(states, prompt_embeds, pooled, latents, sigmas, model_t, guidance, grid, decode,
                             scheduler):
            lh, lw = grid
            flux = nnx.merge(t_graph, states["transformer"])
            img_ids = latent_image_ids(lh // 2, lw // 2)
            txt_ids = text_ids(prompt_embeds.shape[1])

            def velocity(x, t):
                return flux(x, prompt_embeds, pooled, t, img_ids, txt_ids, guidance).astype(x.dtype)

            x = scheduler.sample(velocity, latents, sigmas, timesteps=model_t)
            z = unpack_latents(x, lh, lw)
            return decode_images(nnx.merge(v_graph, states["vae"]), z) if decode else z
        return sample

    # ---- prompts --------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, prompt_2=None, num_images_per_prompt: int = 1,
                      max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        """(prompt_embeds (B*n, max_sequence_length, joint_attention_dim) from T5, pooled (B*n, 768)
        from CLIP, text_ids (max_sequence_length, 3) zeros), as diffusers' `encode_prompt`."""
        prompts = as_prompts(prompt)
        prompts_2 = as_prompts(prompt_2 or prompts, "prompt_2", len(prompts))  # diffusers: `prompt_2 or prompt`
        n = positive_int(num_images_per_prompt, "num_images_per_prompt")
        length = sequence_length(max_sequence_length)  # FLUX.1-dev uses 512, schnell 256
        clip_ids = self.tokenizer(prompts, padding="max_length", truncation=True).input_ids
        t5_ids = self.tokenizer_2(prompts_2, max_length=length, padding="max_length", truncation=True).input_ids
        place = self.placement.batch  # the rows split over the mesh's batch devices where they divide
        states, pooled = self._encode(self._states["clip"], self._states["t5"], place(np.asarray(clip_ids)),
                                      place(np.asarray(t5_ids)), placement=self.placement)
        if n > 1:  # each prompt's rows together, as diffusers' repeat + view
            states, pooled = jnp.repeat(states, n, axis=0), jnp.repeat(pooled, n, axis=0)
        return states, pooled, jnp.asarray(text_ids(length))

    # ---- sampling -------------------------------------------------------------------------------------
    def _initial_latents(self, latents, seed, batch: int, grid: tuple[int, int]):
        """Packed initial latents in the compute dtype, from `seed` or the caller's `latents`
        (diffusers' packed layout, or NHWC)."""
        lh, lw = grid
        c = self.latent_channels
        x = initial_latents((batch, lh, lw, c), seed, latents, packed_shape=(batch, (lh // 2) * (lw // 2), 4 * c))
        x = jnp.asarray(x)
        return (pack_latents(x) if x.ndim == 4 else x).astype(self.dtype)

    def __call__(self, prompt, prompt_2=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5, num_images_per_prompt: int = 1,
                 seed: int | None = None, latents=None, sigmas=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                 output_type: str = "pil"):
        """Images for `prompt` (see the module docstring). `seed` draws the initial latents (None:
        fresh noise); `latents` gives them instead. `sigmas`: a custom grid of num_inference_steps
        values (diffusers' `sigmas`), shifted as the default one is. `output_type`: "pil", "np" or
        "latent" (unigen.pipelines.components)."""
        check_output_type(output_type)
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
        guidance = None  # schnell (no guidance_embeds): no guidance input; diffusers ignores guidance_scale too
        if self.guidance_embeds:
            guidance = jnp.full((batch,), number(guidance_scale, "guidance_scale"), jnp.float32)
        place = self.placement.batch  # the rows split over the mesh's batch devices where they divide
        out = self._sample(self._states, place(prompt_embeds.astype(self.dtype)), place(pooled.astype(self.dtype)),
                           place(x), jnp.asarray(sigma_grid), jnp.asarray(model_t),
                           None if guidance is None else place(guidance), grid=grid,
                           decode=output_type != "latent", placement=self.placement, scheduler=self.scheduler)
        return to_output(out, output_type)
