"""A released diffusers DiT pipeline folder, sampled with unigen (docs/design.md §6).

    pipe = DiTPipeline.from_pretrained("DiT-XL-2-256")        # model_index.json, transformer/, vae/, scheduler/
    images = pipe([207, 360], num_inference_steps=50, guidance_scale=4.0, seed=0)   # (2, 256, 256, 3) in [0, 1]

What diffusers' `DiTPipeline.__call__` (diffusers/pipelines/dit/pipeline_dit.py) does, in one jit:
  * latents x_T ~ N(0, I) of shape (N, sample_size, sample_size, in_channels) (NHWC here), or the
    given `latents`;
  * with guidance_scale > 1, classifier-free guidance on a doubled batch [labels; null] whose null
    label is the embedding table's last row (diffusers writes 1000: the class count of every
    released DiT). Guidance mixes the first in_channels output channels (all of eps; not the
    official DiT's 3), the learned-variance channels are then dropped;
  * the scheduler's steps (unigen/pipelines/schedulers.py: DDIM or DPM-Solver++(2M) from
    scheduler_config.json) as one `lax.scan`;
  * the VAE decodes latents / vae.config.scaling_factor (diffusers applies no shift_factor
    here) and the output is (decoded / 2 + 0.5) clipped to [0, 1].
Defaults are diffusers' signature defaults: guidance_scale 4.0, num_inference_steps 50 (its
docstring says 250; the code says 50).

The transformer and the VAE load through `unigen.pretrained.from_pretrained` (which reads the
legacy class name `Transformer2DModel` of facebook/DiT-XL-2-256's transformer/ as diffusers does).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.diffusion.guidance import classifier_free_guidance
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.hub import resolve
from unigen.models.dit import DiT
from unigen.pipelines.components import MODEL_INDEX
from unigen.pipelines.schedulers import SCHEDULER_OF, Scheduler, read_scheduler


def is_pipeline_folder(path) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(os.fspath(path)), MODEL_INDEX))


def _load_transformer(folder: str) -> DiT:
    from unigen.pretrained import from_pretrained

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise WeightError(f"{folder}: no config.json; a DiTPipeline folder needs its transformer/")
    model = from_pretrained(folder)
    if not isinstance(model, DiT) or model.cfg.num_classes < 1:
        raise WeightError(f"{folder}: a DiTPipeline's transformer must be a class-conditional DiT, got "
                          f"{type(model).__name__}")
    return model


def _load_vae(path: str, where: str):
    from unigen.pretrained import from_pretrained

    vae = from_pretrained(path)
    cfg = getattr(vae, "cfg", None)
    if not hasattr(vae, "decode") or not hasattr(cfg, "scaling_factor") or not hasattr(cfg, "latent_channels"):
        raise WeightError(f"{where} {path}: a {type(vae).__name__} is not a KL autoencoder (no decode / "
                          f"scaling_factor); give a diffusers AutoencoderKL folder")
    return vae


class DiTPipeline:
    """`from_pretrained(folder)` then `pipe(class_labels, ...)` -> numpy (N, H, W, 3) in [0, 1]."""

    def __init__(self, transformer: DiT, vae, scheduler: Scheduler, id2label: dict | None = None):
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        c = transformer.cfg
        if vae.cfg.latent_channels != c.in_channels:
            raise ConfigError(f"the VAE has {vae.cfg.latent_channels} latent channels but the transformer takes "
                              f"{c.in_channels}: give the VAE the DiT was trained with")
        self.latent_shape = (c.input_size, c.input_size, c.in_channels)
        self.null_label = c.num_classes  # diffusers' 1000 for every released (ImageNet) DiT
        # label name -> id, as diffusers' DiTPipeline splits id2label's comma-separated synonyms
        self.labels = {name.strip(): int(k) for k, v in (id2label or {}).items() for name in str(v).split(",")}
        self.id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
        t_graph, t_state = nnx.split(transformer)
        self._v_graph, v_state = nnx.split(vae)
        self._states = (t_state, v_state)

        # Built once: the samplers' compiled loops are cached per model_fn identity.
        def model_fn(x, t, states, y):
            return nnx.merge(t_graph, states)(x, t, y)

        self._model_fn = model_fn
        self._guided, self._compiled = {}, {}

    @classmethod
    def from_pretrained(cls, path, *, vae=None, scheduler: str | None = None,
                        revision: str | None = None) -> "DiTPipeline":
        """Read a diffusers DiTPipeline folder, or a hub id's (`revision`: a branch, tag or commit
        hash; unigen/hub.py: the local cache first, else a download). `vae`: a path
        `from_pretrained` reads, replacing (or supplying) the folder's `vae/`. `scheduler`: read scheduler_config.json as another class
        ("DDIMScheduler", "DPMSolverMultistepScheduler", or unigen's "ddim" / "dpm_solver_2m"),
        as diffusers' `Cls.from_config(pipe.scheduler.config)`."""
        folder = resolve(path, revision=revision)
        index_path = os.path.join(folder, MODEL_INDEX)
        index = read_json(index_path,
                          missing=f"{folder}: no {MODEL_INDEX}; a pipeline folder (diffusers save_pretrained) has one")
        if index.get("_class_name") != "DiTPipeline":
            raise WeightError(f"{index_path}: _class_name {index.get('_class_name')!r}; this reads 'DiTPipeline'")
        transformer = _load_transformer(os.path.join(folder, "transformer"))
        if vae is None:
            vae_dir = os.path.join(folder, "vae")
            if not os.path.isfile(os.path.join(vae_dir, "config.json")):
                raise ConfigError(f"{folder} has no vae/ component: pass vae= (infer/sample.py --vae PATH) a "
                                  f"diffusers AutoencoderKL folder, e.g. the sd-vae-ft-ema the DiT was trained with")
            vae_model = _load_vae(vae_dir, "the pipeline's vae/")
        else:
            vae_model = _load_vae(os.fspath(vae), "vae=")
        sched_path = os.path.join(folder, "scheduler", "scheduler_config.json")
        sched_config = read_json(sched_path, missing=f"{folder}: no scheduler/scheduler_config.json")
        name = SCHEDULER_OF.get(scheduler, scheduler)
        sched = read_scheduler(sched_config, where=sched_path, class_name=name, in_channels=transformer.cfg.in_channels)
        return cls(transformer, vae_model, sched, index.get("id2label"))

    def get_label_ids(self, names) -> list[int]:
        """ImageNet class names (id2label's words) -> ids, as diffusers' `get_label_ids`."""
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in self.labels]
        if missing:
            raise ConfigError(f"labels {missing} are not in this pipeline's id2label"
                              + ("" if self.labels else " (it has none: pass class ids)"))
        return [self.labels[n] for n in names]

    def _sampler(self, batch: int, steps: int, scale: float):
        key = (batch, steps, scale)
        if key in self._compiled:
            return self._compiled[key]
        c = self.transformer.cfg
        model_fn = self._model_fn
        if scale > 1.0:  # diffusers guides only above 1
            if scale not in self._guided:
                self._guided[scale] = classifier_free_guidance(
                    self._model_fn, scale, null_cond={"y": self.null_label}, shared=("states",),
                    channels=c.in_channels)
            model_fn = self._guided[scale]
        shape, scaling, v_graph = (batch, *self.latent_shape), float(self.vae.cfg.scaling_factor), self._v_graph
        self.scheduler.timesteps(steps)  # bad step counts fail here, before tracing

        def run(states, labels, noise):
            t_state, v_state = states
            latents = self.scheduler.sample(model_fn, shape, jax.random.PRNGKey(0), steps=steps,
                                            learn_sigma=c.learn_sigma, cond=dict(states=t_state, y=labels),
                                            noise=noise)
            decoded = nnx.merge(v_graph, v_state).decode(latents / scaling)
            return jnp.clip(decoded / 2 + 0.5, 0.0, 1.0)

        self._compiled[key] = jax.jit(run)
        return self._compiled[key]

    def __call__(self, class_labels, num_inference_steps: int = 50, guidance_scale: float = 4.0, latents=None,
                 seed: int = 0, batch_size: int | None = None) -> np.ndarray:
        """Images for `class_labels` (ids, or id2label names) as numpy (N, H, W, C) float32 in [0, 1].
        `latents`: the initial noise (N, h, w, C) NHWC; otherwise drawn from `seed`. `batch_size`
        images are sampled per compiled call (default: all); the images do not depend on it."""
        labels = list(class_labels) if not isinstance(class_labels, (int, str, np.integer)) else [class_labels]
        labels = [self.get_label_ids(v)[0] if isinstance(v, str) else v for v in labels]
        try:
            labels = np.asarray(labels, np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError(f"class_labels {class_labels!r}: give integer class ids") from None
        num_classes = self.transformer.cfg.num_classes
        bad = [int(v) for v in labels if not 0 <= v < num_classes]
        if labels.size == 0 or bad:
            raise ConfigError(f"class_labels {bad or '[]'}: give class ids in 0..{num_classes - 1}")
        n = labels.size
        shape = (n, *self.latent_shape)
        if latents is None:
            noise = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32))
        else:
            noise = np.asarray(latents, np.float32)
            if noise.shape != shape:
                raise ConfigError(f"latents shape {noise.shape}: expected {shape} (N, h, w, C), channels last")
        steps, scale = int(num_inference_steps), float(guidance_scale)
        batch = min(int(batch_size or n), n)
        out = []
        for start in range(0, n, batch):
            part = slice(start, min(start + batch, n))
            fn = self._sampler(part.stop - part.start, steps, scale)
            out.append(np.asarray(fn(self._states, jnp.asarray(labels[part], jnp.int32), jnp.asarray(noise[part]))))
        return np.concatenate(out).astype(np.float32)
