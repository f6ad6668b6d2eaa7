"""The "unidiffuser" task: one U-ViT (model kind "uvit") for the joint, conditional and marginal
distributions of images and captions (Bao et al. 2023), on captioned digits.

The two modalities (REFERENCES.md "UniDiffuser"):
  * image = the pixels `img` (B, 8, 8, 1) in [-1, 1] and, in UniDiffuser's CLIP-image slot,
    `clip_img` (B, D): the frozen LZN image encoder's embedding of the same image
    (`config.unidiffuser.clip_encoder`, an LZN work dir; never the evaluation classifier): its
    anchor or a PCA of its token states (`config.unidiffuser.clip_embedding`), standardised per
    dimension with statistics of the training split. Both share t_img.
  * text = the caption's all-MiniLM-L6-v2 token states (`config.text.encoder`), reduced to
    `config.unidiffuser.text_dim` dimensions by a fixed PCA with unit variance
    (unigen/unidiffuser/text_latents.py): (B, T, text_dim). Each training image draws one of
    its digit's training captions per step (unigen/data/captions.py).

Loss: the multi-timestep objective (unigen/unidiffuser/objective.py) with `config.diffusion`'s
discrete Gaussian diffusion (UniDiffuser: kind "gaussian", beta_schedule "scaled_linear",
1000 steps, noise prediction) or a rectified flow (kind "flow": one noise level per modality
from the flow's time sampling, velocities predicted; model times 0..1000 as diffusers').
Sampling: the five modes of unigen/unidiffuser/modes.py through the shared samplers, guidance
`config.sample.cfg_scale` (per mode: `unidiffuser.cfg_scales`); grids show text-to-image, one
row per digit, prompted with held-out captions.

Evaluation (one seed; `config.eval.num_samples` per generative mode): text->image (the digits
classifier reads the prompted digit; FD etc. as the digits protocol), image->text on every test
image (the nearest caption names the right digit), joint (the classifier's digit of the image =
the digit the text names), marginal image (FD next to the memoriser's at the same count),
marginal text (how the named digits spread). `eval.json` holds every figure.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.data.captions import digit_captions
from unigen.diffusion.objective import per_example, split_keys
from unigen.diffusion.registry import sampler_options
from unigen.errors import ConfigError
from unigen.config_sections import config_section, read_section, section_field
from unigen.tasks.arrays import in_batches, split_arrays
from unigen.tasks.base import Task, register_task
from unigen.tasks.frozen import representation_encoder, text_encoder
from unigen.tasks.requests import IMAGE_INPUT, NUM, PER_PROMPT, PROMPT, Drawn, SampleRequest, read_images, repeated_prompts
from unigen.unidiffuser import IMAGE, TEXT, Layout, ModeSampler, TextPCA, multi_timestep_losses, nearest
from unigen.unidiffuser.objective import TIME_WEIGHTINGS, check_endpoint_prob, check_objective, check_weighting


# What of the frozen LZN encoder fills UniDiffuser's CLIP-image slot (the paper uses CLIP's image
# embedding, a strong semantic summary). Either is standardised per dimension on the training split.
CLIP_EMBEDDINGS = {
    # the encoder's output: its 64-d anchor (the reference's LZN latent)
    "anchor": "the encoder's anchor",
    # its token states (16 x 64), flattened and reduced to model.clip_img_dim by a PCA fitted on the
    # training split: on digits the 64 components probe at 0.98 against the anchor's 0.94
    # (bench/RESULTS.md), and image->text reads the digit mostly from this slot
    "tokens": "a PCA of the encoder's flattened token states",
}


@config_section("unidiffuser")
@dataclasses.dataclass(frozen=True)
class UniDiffuserOptions:
    clip_encoder: str = ""          # the frozen image encoder of the clip_img slot: an LZN work dir
    text_dim: int = 8               # PCA components of the text token states
    weighting: str = "joint"        # "joint" (the paper's) or "per_modality" (unigen/unidiffuser/objective.py)
    data_type: int = 1              # the data-type token, for models with use_data_type_embedding (v1: 1)
    cfg_scales: tuple = ()          # ((mode, scale), ...) overriding sample.cfg_scale per guided mode
    text_samples: int = 1000        # marginal-text samples in the evaluation
    time_weighting: str = "uniform"  # "uniform" (the paper's) or "v" (unigen/unidiffuser/objective.py)
    min_snr_gamma: float | None = None  # None, or Min-SNR-gamma's cap on the nearly clean steps
    # per modality: P(clean) = P(pure noise), the modes' condition times (runs written before it: 0.0)
    endpoint_prob: float = section_field(0.0, before=0.0)
    # what of the encoder fills clip_img: "anchor" or "tokens" (see CLIP_EMBEDDINGS; runs before it: "anchor")
    clip_embedding: str = section_field("anchor", before="anchor")

    @classmethod
    def from_config(cls, cfg) -> "UniDiffuserOptions":
        opts = read_section(cls, cfg)
        # {mode: scale} or ((mode, scale), ...): sorted pairs, hashable
        opts = dataclasses.replace(opts, cfg_scales=tuple(sorted(dict(opts.cfg_scales).items())))
        try:
            check_weighting(opts.weighting)
        except ValueError as e:
            raise ConfigError(f"config.unidiffuser.{e}") from None
        for field in ("text_dim", "text_samples"):
            v = getattr(opts, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"config.unidiffuser.{field}={v!r}: must be a positive integer")
        if opts.time_weighting not in TIME_WEIGHTINGS:
            raise ConfigError(f"config.unidiffuser.time_weighting={opts.time_weighting!r}: use one of {TIME_WEIGHTINGS}")
        g = opts.min_snr_gamma
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or g <= 0):
            raise ConfigError(f"config.unidiffuser.min_snr_gamma={g!r}: None (uniform) or a number > 0 (e.g. 5)")
        try:
            check_endpoint_prob(opts.endpoint_prob)
        except ValueError as e:
            raise ConfigError(f"config.unidiffuser.{e}") from None
        if opts.data_type not in (0, 1):
            raise ConfigError(f"config.unidiffuser.data_type={opts.data_type!r}: 0 or 1")
        for mode, scale in opts.cfg_scales:
            if mode not in ("joint", "t2i", "i2t") or isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise ConfigError(f"config.unidiffuser.cfg_scales: {mode!r}: {scale!r}; give guided modes "
                                  f"(joint, t2i, i2t) and numbers")
        if opts.clip_embedding not in CLIP_EMBEDDINGS:
            raise ConfigError(f"config.unidiffuser.clip_embedding={opts.clip_embedding!r}: use one of "
                              f"{sorted(CLIP_EMBEDDINGS)}")
        if not isinstance(opts.clip_encoder, str):
            raise ConfigError(f"config.unidiffuser.clip_encoder={opts.clip_encoder!r}: give an LZN work dir")
        return opts


@functools.lru_cache(maxsize=4)
def _caption_states(encoder_name: str, captions: tuple[str, ...]):
    """(token states (N, T, D), mask (N, T)) of every caption, padded to the longest."""
    out = text_encoder(encoder_name).encode(list(captions))
    return np.asarray(out.tokens, np.float32), np.asarray(out.mask, bool)


def _load_clip_encoder(path: str):
    model = representation_encoder(path, "unidiffuser.clip_encoder")
    if not callable(model) or not hasattr(model, "features") or not hasattr(model, "tokens"):
        raise ConfigError(f"config.unidiffuser.clip_encoder={path!r} holds a {type(model).__name__}; give an LZN "
                          f"work dir (its image encoder embeds each image)")
    return model


@register_task("unidiffuser")
class UniDiffuserTask(Task):
    # The unconditional branch is the condition replaced by noise at t = T: no null condition.
    guidance_needs_null = False

    def __init__(self, cfg, model_kind, model_cfg):
        super().__init__(cfg, model_kind, model_cfg)
        if model_kind.name != "uvit":
            raise ConfigError(f"config.task.name='unidiffuser' trains a U-ViT (model.kind='uvit'); got "
                              f"{model_kind.name!r}")
        if cfg.data.name != "digits":
            raise ConfigError(f"config.data.name={cfg.data.name!r}: the unidiffuser task pairs the digits with their "
                              f"captions; other data sets are not supported yet")
        self.opts = UniDiffuserOptions.from_config(cfg)
        from unigen.tasks.diffusion import diffusion_process
        if cfg.diffusion.kind not in ("gaussian", "flow"):
            raise ConfigError(f"config.diffusion.kind={cfg.diffusion.kind!r}: UniDiffuser's objective is the discrete "
                              f"Gaussian diffusion (kind='gaussian', beta_schedule='scaled_linear'; the paper) or, "
                              f"per modality the same way, a rectified flow (kind='flow')")
        try:
            self.process = diffusion_process(cfg.diffusion, learn_sigma=False)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        try:
            check_objective(self.process, self.opts.time_weighting, self.opts.min_snr_gamma)
        except ValueError as e:
            section = "diffusion" if str(e).startswith("direction_weight") else "unidiffuser"
            raise ConfigError(f"config.{section}.{e}") from None
        self.encoder_name = (cfg.get("text") or {}).get("encoder", "")
        if not isinstance(self.encoder_name, str) or not self.encoder_name:
            raise ConfigError("config.text.encoder is empty: name a text encoder folder or 'all-MiniLM-L6-v2'")
        self.captions = digit_captions()
        tokens, mask = _caption_states(self.encoder_name, self.captions.captions)
        self.context_length = tokens.shape[1]
        try:
            self.pca = TextPCA.fit(tokens[self.captions.train_ids.ravel()], mask[self.captions.train_ids.ravel()],
                                   self.opts.text_dim)
        except ValueError as e:
            raise ConfigError(f"config.unidiffuser.{e}") from None
        self.text_table = self.pca(tokens, mask)  # (N captions, T, text_dim); row 0 is "" (unused)
        d = cfg.data
        want = dict(text_dim=self.opts.text_dim, num_text_tokens=self.context_length, sample_size=d.image_size,
                    in_channels=d.channels)
        for field, value in want.items():
            if getattr(model_cfg, field) != value:
                raise ConfigError(f"config.model.{field}={getattr(model_cfg, field)}: the {TEXT if 'text' in field else IMAGE}"
                                  f" modality has {value} ({self._why(field)}); set config.model.{field}={value}")
        self.layout = Layout(((IMAGE, (("img", (d.image_size, d.image_size, d.channels)),
                                       ("clip_img", (model_cfg.clip_img_dim,)))),
                              (TEXT, (("text", (self.context_length, self.opts.text_dim)),))))
        self.sample_shape = (d.image_size, d.image_size, d.channels)
        self.clip = True

    def _why(self, field):
        return {"text_dim": "config.unidiffuser.text_dim", "num_text_tokens":
                f"the longest caption is {self.context_length} tokens for {self.encoder_name!r}",
                "sample_size": "config.data.image_size", "in_channels": "config.data.channels"}[field]

    labelled = True  # grids and protocols are per digit

    # ---- the frozen image encoder of the clip_img slot ------------------------------------------
    def _raw_embedding(self, encoder, x):
        """What `unidiffuser.clip_embedding` takes of the encoder: (B, D) before reduction/scaling."""
        if self.opts.clip_embedding == "tokens":
            return encoder.tokens(x).astype(jnp.float32).reshape(x.shape[0], -1)
        return encoder(x)

    @functools.cached_property
    def clip_encoder(self):
        if not self.opts.clip_encoder:
            raise ConfigError("config.unidiffuser.clip_encoder is empty: give an LZN work dir (train one with "
                              "configs/lzn_repr_digits.py)")
        with jax.ensure_compile_time_eval():  # frozen() may run inside the trainer's eval_shape: load eagerly
            graphdef, state = nnx.split(_load_clip_encoder(self.opts.clip_encoder))
        x = jnp.zeros((1, self.cfg.data.image_size, self.cfg.data.image_size, self.cfg.data.channels))
        try:
            width = jax.eval_shape(lambda s: self._raw_embedding(nnx.merge(graphdef, s), x), state).shape[-1]
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config.unidiffuser.clip_encoder={self.opts.clip_encoder!r} does not take the "
                              f"{x.shape[1]}x{x.shape[2]}x{x.shape[3]} images of config.data: {e}") from None
        want = self.model_cfg.clip_img_dim
        if self.opts.clip_embedding == "anchor" and width != want:
            raise ConfigError(f"config.model.clip_img_dim={want}: the encoder at {self.opts.clip_encoder!r} "
                              f"embeds images in {width} dimensions; set config.model.clip_img_dim={width}")
        if self.opts.clip_embedding == "tokens" and want > width:
            raise ConfigError(f"config.model.clip_img_dim={want}: the encoder at {self.opts.clip_encoder!r} has "
                              f"{width} token numbers per image to reduce; set config.model.clip_img_dim <= {width}")
        return graphdef, state

    def images(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, H, W, C) in [-1, 1], labels (N,)) of a whole split, as the loader preprocesses."""
        return split_arrays(self.cfg, split)

    @functools.cached_property
    def _clip_constants(self) -> dict:
        """The frozen map from raw embeddings to clip_img, fitted on the training split (encoded
        once): "clip_projection" (D, clip_img_dim), the token states' PCA directions (absent for
        the anchor, which fills the slot as it is, so its runs keep the frozen tree they were
        written with), then "clip_mean" / "clip_std" per dimension of the (reduced) embeddings."""
        z = self._embed_raw(self.images("train")[0])  # loads and checks the encoder before anything compiles
        out = {}
        if self.opts.clip_embedding == "tokens":
            dim = self.model_cfg.clip_img_dim
            if dim > len(z):
                raise ConfigError(f"config.model.clip_img_dim={dim}: a PCA of {len(z)} training images gives at "
                                  f"most {len(z)} components")
            out["clip_projection"] = TextPCA.fit(z[:, None, :], np.ones((len(z), 1), bool), dim).components.T.copy()
            z = z @ out["clip_projection"]
        z = z.astype(np.float64)
        out["clip_mean"], out["clip_std"] = z.mean(0).astype(np.float32), np.maximum(z.std(0), 1e-6).astype(np.float32)
        return out

    @functools.cached_property
    def _encode_fn(self):
        graphdef = self.clip_encoder[0]
        return jax.jit(lambda s, x: self._raw_embedding(nnx.merge(graphdef, s), x))

    def _embed_raw(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        state, fn = self.clip_encoder[1], self._encode_fn
        # frozen() may be called inside a trace (the trainer's eval_shape): compute eagerly.
        with jax.ensure_compile_time_eval():
            return in_batches(lambda b: fn(state, jnp.asarray(b, jnp.float32)), images, batch)

    def _standardise(self, raw, frozen):
        """clip_img from the raw embeddings (B, D): reduced (tokens) and standardised."""
        if "clip_projection" in frozen:
            raw = raw @ frozen["clip_projection"]
        return (raw - frozen["clip_mean"]) / frozen["clip_std"]

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """The clip_img of images (N, H, W, C) in [-1, 1]: standardised encoder embeddings (N, D)."""
        images = np.asarray(images, np.float32)
        want = (self.cfg.data.image_size, self.cfg.data.image_size, self.cfg.data.channels)
        if images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(f"images of shape {images.shape}: expected (N, {', '.join(map(str, want))}) in [-1, 1]")
        return np.asarray(self._standardise(self._embed_raw(images), self._clip_constants))

    def frozen(self, seed):
        return {"clip_encoder": self.clip_encoder[1], "text_table": jnp.asarray(self.text_table),
                **{k: jnp.asarray(v) for k, v in self._clip_constants.items()}}

    # ---- data and loss ----------------------------------------------------------------------------
    def dataset(self, split, *, batch_size, seed, shard, shards):
        from unigen.data.pipeline import make_dataset
        d = self.cfg.data
        return make_dataset(d.name, split, batch_size=batch_size, image_size=d.image_size, seed=seed,
                            process_index=shard, process_count=shards, data_dir=d.data_dir or None)

    def network(self, model):
        """The U-ViT as the objective's and the modes' network: modality -> parts, times -> eps."""
        data_type = self.opts.data_type if self.model_cfg.use_data_type_embedding else None

        def net(parts, times):
            (img, clip_img), (text,) = parts[IMAGE], parts[TEXT]
            out_img, out_clip, out_text = model(img, clip_img, text, times[IMAGE], times[TEXT], data_type=data_type)
            return {IMAGE: (out_img, out_clip), TEXT: (out_text,)}
        return net

    def loss(self, model, batch, rng, frozen):
        x, labels = batch["image"], batch["label"]
        n = x.shape[0]
        k_caption, k_loss = split_keys(rng)
        train_ids = jnp.asarray(self.captions.train_ids)
        pick = per_example(k_caption, n, lambda k: jax.random.randint(k, (), 0, train_ids.shape[1]))
        text = frozen["text_table"][train_ids[labels, pick]]
        encoder = nnx.merge(self.clip_encoder[0], frozen["clip_encoder"])
        clip_img = jax.lax.stop_gradient(self._standardise(self._raw_embedding(encoder, x.astype(jnp.float32)), frozen))
        losses = multi_timestep_losses(self.process, self.network(model),
                                       {IMAGE: (x, clip_img.astype(x.dtype)), TEXT: (text.astype(x.dtype),)}, k_loss,
                                       weighting=self.opts.weighting, time_weighting=self.opts.time_weighting,
                                       min_snr_gamma=self.opts.min_snr_gamma, endpoint_prob=self.opts.endpoint_prob)
        return losses["loss"].mean(), {k: v.mean() for k, v in losses.items()}

    # ---- sampling -----------------------------------------------------------------------------------
    def generator(self, sample_cfg, graphdef, **kwargs):
        options = dict(sampler=sample_cfg.sampler, steps=sample_cfg.steps, cfg_scale=sample_cfg.cfg_scale)
        options.update(kwargs)
        own = options.get("sampler_options") or sampler_options(sample_cfg, options["sampler"])  # eta, clip_denoised..
        if getattr(own, "clip_denoised", False):
            raise ConfigError("config.sample.clip_denoised=True: a UniDiffuser sample packs pixels with embeddings "
                              "and text latents, which [-1, 1] does not bound; set False (the images are clipped "
                              "at the end)")
        options["sampler_options"] = own
        options.pop("guided_channels", None)  # every output of a mode is guided
        return ModeSampler(graphdef, self.process, self.layout, self.network, cfg_scales=dict(self.opts.cfg_scales),
                           **options)

    def text_latents(self, caption_ids) -> np.ndarray:
        return self.text_table[np.asarray(caption_ids)]

    def conditions_for_prompts(self, prompts) -> dict:
        """The t2i condition {"text": (N, T, text_dim)} of any prompts (encoded now)."""
        if isinstance(prompts, str) or not len(prompts):
            raise ValueError("give a non-empty list of prompts")
        encoder = text_encoder(self.encoder_name)
        lengths = encoder.tokenize(list(prompts)).attention_mask.sum(1)
        long = [p for p, n in zip(prompts, lengths) if n > self.context_length]
        if long:
            raise ValueError(f"prompts {long[:3]} are longer than the model's {self.context_length} text tokens "
                             f"(config.model.num_text_tokens); shorten them")
        out = encoder.encode(list(prompts), pad_to=self.context_length)
        return {"text": self.pca(np.asarray(out.tokens), np.asarray(out.mask))}

    def conditions_for_images(self, images) -> dict:
        """The i2t condition {"img", "clip_img"} of images (N, H, W, C) in [-1, 1]."""
        images = np.asarray(images, np.float32)
        return {"img": images, "clip_img": self.embed_images(images)}

    def read_captions(self, text_latents) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(caption strings, digit each names (-1: none), distance) of the nearest captions of the set
        (training and held-out templates, not the empty prompt)."""
        ids, dist = nearest(text_latents, self.text_table, candidates=np.arange(1, len(self.text_table)))
        return np.asarray(self.captions.captions, dtype=object)[ids].astype(str), self.captions.digit[ids], dist

    def conditions_for_labels(self, labels):
        return {"text": self.text_latents(self.captions.held_out_for(labels))}

    def grid(self, per_row, classes=None):
        """Text to image: one row per digit, each prompted with a held-out caption."""
        classes = list(range(10)) if classes is None else list(classes)
        labels = np.repeat(np.asarray(classes, np.int64), per_row)
        return self.conditions_for_labels(labels), len(labels), len(classes)

    def grid_labels(self, per_row, classes=None):
        return [str(c) for c in (range(10) if classes is None else classes)]  # the digit its prompts name

    def sample_requests(self):
        """The grid (text to image, a row per digit) and the five modes, each with its condition."""
        def mode(name, help, arguments=(NUM,), **kwargs):
            return SampleRequest(name, help, functools.partial(self.draw_mode, name), arguments, **kwargs)
        return (*super().sample_requests(),
                mode("t2i", "text to image: a grid row per --prompt", (PROMPT, PER_PROMPT), required=("prompt",),
                     selected_by="prompt"),
                mode("i2t", "image to text: the nearest caption of each --image", (IMAGE_INPUT,), required=("image",),
                     selected_by="image"),
                mode("joint", "--num image-caption pairs"), mode("image", "--num images (the marginal)"),
                mode("text", "--num captions (the marginal)"))

    def draw_mode(self, mode, given, generate, seed):
        """One of the five modes: images go into the grid, text latents are read as the nearest captions."""
        arrays, rows, row_labels = {}, None, None
        try:
            if mode == "t2i":
                prompts = repeated_prompts(given)
                cond, num, rows, row_labels = self.conditions_for_prompts(list(prompts)), len(prompts), \
                    len(given["prompt"]), list(given["prompt"])
                arrays["prompts"] = prompts
            elif mode == "i2t":
                images = read_images(given["image"], self.cfg.data, lambda: self.images("test")[0])
                cond, num = self.conditions_for_images(images), len(images)
                arrays["given_images"] = images
            else:
                cond, num = {}, given["num"]
        except ValueError as e:
            raise ConfigError(f"--mode {mode}: {e}") from None
        out = generate(cond, num, seed, label=mode, mode=mode)
        grid, lines = None, ()
        if "img" in out:
            grid = arrays["images"] = out["img"].astype(np.float32)
            rows = rows or max(1, int(np.sqrt(num)))
        if "text" in out:
            captions, digits, _ = self.read_captions(out["text"])
            arrays.update(text=out["text"].astype(np.float32), captions=captions, digits=digits)
            lines = tuple(f"{i:3d}: {caption}" for i, caption in enumerate(captions[:32]))
        return Drawn(arrays, num, grid, rows, row_labels, lines)

    # ---- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, generate, workdir, model=None):
        from unigen.eval import classify, eval_labels, report
        from unigen.images import save_grid
        e, seed = self.cfg.eval, 0
        n = e.num_samples
        rows, arrays, lines = {}, {}, []

        labels = eval_labels(n, seed)
        t2i = generate(self.conditions_for_labels(labels), n, 10_000 + seed, label="eval t2i", mode="t2i")["img"]
        t2i_rows, t2i_text = report(t2i, labels, np.full(n, seed), title="text -> image")
        rows["t2i"] = t2i_rows
        lines.append(t2i_text)
        arrays.update(t2i_images=t2i, t2i_labels=labels)

        test_x, test_y = self.images("test")
        text = generate(self.conditions_for_images(test_x), len(test_x), 20_000 + seed, label="eval i2t",
                        mode="i2t")["text"]
        captions, named, _ = self.read_captions(text)
        rows["i2t"] = {"accuracy": float(np.mean(named == test_y)), "n": int(len(test_y)),
                       "names_no_digit": float(np.mean(named < 0))}
        arrays.update(i2t_captions=captions, i2t_labels=test_y)

        joint = generate({}, n, 30_000 + seed, label="eval joint", mode="joint")
        j_captions, j_named, _ = self.read_captions(joint["text"])
        j_digit = classify(joint["img"])[0].argmax(1)
        rows["joint"] = {"consistency": float(np.mean(j_digit == j_named)), "n": n,
                         "names_no_digit": float(np.mean(j_named < 0)),
                         "digit_shares": np.bincount(j_named[j_named >= 0], minlength=10).tolist()}
        arrays.update(joint_images=joint["img"], joint_captions=j_captions)

        marginal = generate({}, n, 40_000 + seed, label="eval image", mode="image")["img"]
        m_rows, m_text = report(marginal, None, np.full(n, seed), title="marginal image")
        rows["image"] = m_rows
        lines.append(m_text)
        arrays.update(image_images=marginal)

        m = self.opts.text_samples
        t_captions, t_named, t_dist = self.read_captions(
            generate({}, m, 50_000 + seed, label="eval text", mode="text")["text"])
        counts = np.bincount(t_named[t_named >= 0], minlength=10)
        shares = counts / max(counts.sum(), 1)
        entropy = float(-(shares[shares > 0] * np.log(shares[shares > 0])).sum() / np.log(10))
        rows["text"] = {"n": m, "names_no_digit": float(np.mean(t_named < 0)), "digit_shares": shares.tolist(),
                        "normalised_entropy": entropy, "median_distance": float(np.median(t_dist))}
        arrays.update(text_captions=t_captions)

        memoriser = next(v for k, v in rows["image"].items() if k.startswith("memoriser"))
        fd, mem = rows["image"]["samples"]["fd"]["mean"], memoriser["fd"]["mean"]
        rows["summary"] = {"t2i_accuracy": rows["t2i"]["samples"]["accuracy"]["mean"],
                           "i2t_accuracy": rows["i2t"]["accuracy"], "joint_consistency": rows["joint"]["consistency"],
                           "image_fd": fd, "memoriser_fd": mem, "image_fd_ratio": fd / mem,
                           "text_entropy": entropy}
        rows["samples"] = {k: {"mean": v} for k, v in rows["summary"].items()}  # the scalars TensorBoard logs
        s = rows["summary"]
        lines.append(f"one network, five modes ({n} samples per generative mode, seed {seed}):\n"
                     f"  text -> image: the classifier reads the prompted digit in {s['t2i_accuracy']:.4f}\n"
                     f"  image -> text: the nearest caption names the right digit for {s['i2t_accuracy']:.4f} "
                     f"of {len(test_y)} test images\n"
                     f"  joint: image and text agree on the digit in {s['joint_consistency']:.4f}\n"
                     f"  marginal image: FD {fd:.3f} = {fd / mem:.2f}x the memoriser's {mem:.3f}\n"
                     f"  marginal text: digits named with normalised entropy {entropy:.3f} "
                     f"(1 = uniform), {rows['text']['names_no_digit']:.3f} name none")
        print("\n\n".join(lines), flush=True)
        if jax.process_index() == 0:
            np.savez_compressed(os.path.join(workdir, "eval_samples.npz"), **arrays)
            order = np.argsort(labels, kind="stable")
            per = max(1, min(10, n // 10))
            pick = np.concatenate([order[labels[order] == c][:per] for c in range(10)])
            save_grid(os.path.join(workdir, "eval_t2i.png"), t2i[pick], rows=10)
            save_grid(os.path.join(workdir, "eval_joint.png"), joint["img"][:100], rows=10)
            with open(os.path.join(workdir, "eval_joint_captions.txt"), "w") as f:
                f.write("\n".join(j_captions[:100]) + "\n")
            with open(os.path.join(workdir, "eval.json"), "w") as f:
                json.dump(rows, f, indent=2)
        return rows
