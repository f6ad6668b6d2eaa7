"""The "diffusion" task: a diffusion objective on images (or any NHWC arrays) with named
conditions, e.g. class-conditional DiT on digits or ImageNet.

Config (`config.task`): `conditions` maps each model condition to the batch entry that feeds
it (default: DiT's `y` <- `label`; any other condition <- the entry of the same name).
`config.diffusion` picks the objective: kind="gaussian" (DDPM/IDDPM: num_timesteps,
beta_schedule, loss) or kind="flow" (rectified flow: time_sampling, loc, scale, shift,
time_scale, and LightningDiT's direction_weight, time_convention, sample_shift or its
`timestep_shift` = 1 / sample_shift; RAE's `shift_base_dim`: shift = sqrt(H*W*C / shift_base_dim)
of the model input, None = off; unigen/diffusion/flow.py). The resolved objective is
`task.process` (its `shift` the shift in use). Evaluation (digits only): the
fixed protocol of `unigen.eval`, with the class accuracy when the model is class-conditional and
label-free (FD, memorisation) otherwise.
With `config.data.latent_encoder` the task trains on a tokenizer's latents and decodes its
samples to pixels (unigen/tasks/latent_space.py).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from unigen.data.shapes import model_input_shape
from unigen.diffusion.objective import split_keys
from unigen.diffusion.registry import get_objective, objective_names, objective_options
from unigen.errors import ConfigError
from unigen.tasks.base import Task, register_task
from unigen.tasks.requests import CLASS, CLASSES, PER_CLASS, PROTOCOL, Drawn, SampleRequest, given_classes
from unigen.tasks.latent_space import LatentSpace

DEFAULT_BATCH_KEYS = {"y": "label"}


def diffusion_process(dcfg, learn_sigma: bool, input_shape: tuple[int, ...] | None = None):
    """The objective `config.diffusion` describes: `kind` names a registered objective
    (unigen.diffusion.registry; "gaussian" and "flow" are built in), built from its typed options.
    ValueError (a ConfigError) naming the field if bad. `input_shape` is one model input's shape
    (H, W, C), for options that depend on it (the flow's `shift_base_dim`)."""
    if dcfg.get("kind") not in objective_names():
        raise ConfigError(f"config.diffusion.kind={dcfg.get('kind')!r}: use one of {objective_names()} (an "
                          f"objective defined outside unigen is registered by a module named in config.imports)")
    options = objective_options(dcfg)
    try:
        return get_objective(dcfg.kind).build(options, learn_sigma=learn_sigma, input_shape=input_shape)
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith("config.") else f"config.diffusion.{e}") from None


@register_task("diffusion")
class DiffusionTask(Task):
    def __init__(self, cfg, model_kind, model_cfg):
        super().__init__(cfg, model_kind, model_cfg)
        d = cfg.data
        side, channels = model_input_shape(d)  # what the model is sized for (shift_base_dim reads it)
        self.process = diffusion_process(cfg.diffusion, bool(getattr(model_cfg, "learn_sigma", False)),
                                         input_shape=(side, side, channels))
        # Pixels in [-1, 1], or a tokenizer's latents (unigen/tasks/latent_space.py).
        self.latents = LatentSpace(cfg) if d.get("latent_encoder") else None
        self.sample_shape = self.latents.shape if self.latents else (d.image_size, d.image_size, d.channels)
        self.clip = self.latents is None
        given = dict((cfg.get("task") or {}).get("conditions") or {})
        self.batch_keys = {name: given.get(name, DEFAULT_BATCH_KEYS.get(name, name)) for name in self.conditions}

    @property
    def labelled(self) -> bool:
        """Class-conditional: labels map to conditions (a subclass may map them to anything)."""
        return bool(self.conditions_for_labels(np.zeros(1, np.int32)))

    def dataset(self, split, *, batch_size, seed, shard, shards):
        from unigen.data.pipeline import make_dataset
        d = self.cfg.data
        if self.latents is not None:
            return self.latents.dataset(split, batch_size=batch_size, seed=seed, shard=shard, shards=shards)
        return make_dataset(d.name, split, batch_size=batch_size, image_size=d.image_size, seed=seed,
                            process_index=shard, process_count=shards, data_dir=d.data_dir or None)

    def clean_data(self, batch: dict, rng) -> jax.Array:
        """x0 of the objective: the batch's images, or a normalised posterior sample of its latents
        (drawn from the per-example keys `rng` on a stream of its own: pixel runs draw nothing)."""
        if self.latents is not None:
            return self.latents.clean_sample(batch, rng)
        return batch["image"]

    def decode_samples(self, samples: np.ndarray) -> np.ndarray:
        return samples if self.latents is None else self.latents.decode(samples)

    def model_inputs(self, batch: dict, rng=None) -> tuple:
        data_keys = ["image"] if self.latents is None else (
            ["latent_mean"] if self.latents.codec.deterministic else ["latent_mean", "latent_logvar"])
        missing = [key for key in [*data_keys, *self.batch_keys.values()] if key not in batch]
        if missing:
            raise ConfigError(f"config.task: the {self.name!r} batch has no {missing} (it has {sorted(batch)}); "
                              f"map the model's conditions to batch entries with config.task.conditions")
        return self.clean_data(batch, rng), {name: batch[key] for name, key in self.batch_keys.items()}

    def loss(self, model, batch, rng, frozen):
        x0, cond = self.model_inputs(batch, rng)
        k_drop, k_loss = split_keys(rng)
        cond = self.drop_conditions(cond, k_drop)
        losses = self.process.losses(model, x0, k_loss, **cond)
        return losses["loss"].mean(), {k: v.mean() for k, v in losses.items() if k != "sigma"}

    def conditions_for_labels(self, labels):
        return {"y": np.asarray(labels, np.int32)} if "y" in self.conditions else {}

    def grid(self, per_row, classes=None):
        """One row per class (at most 16, evenly spread, for 1000-class data sets)."""
        if not self.labelled:
            return {}, 4 * per_row, 4
        classes = self._grid_classes(classes)
        labels = np.repeat(np.asarray(classes, np.int32), per_row)
        return self.conditions_for_labels(labels), len(labels), len(classes)

    def grid_labels(self, per_row, classes=None):
        return [str(c) for c in self._grid_classes(classes)] if self.labelled else None

    def _grid_classes(self, classes):
        if classes is not None:
            return classes
        num_classes = self.cfg.data.num_classes
        return np.unique(np.linspace(0, num_classes - 1, min(num_classes, 16)).astype(int))

    def protocol_samples(self, generate, *, num_samples: int, seeds):
        """The evaluation protocol's samples (unigen.eval): per seed, `num_samples` labels with the
        test split's mix, sampled from PRNGKey(10_000 + seed). (images, labels, seed per sample)."""
        from unigen.eval import eval_labels
        images, labels, seed_of = [], [], []
        for i, seed in enumerate(seeds):
            y = eval_labels(num_samples, seed)
            images.append(generate(self.conditions_for_labels(y), num_samples, 10_000 + seed,
                                   label=f"eval seed {i + 1}/{len(seeds)}"))
            labels.append(y)
            seed_of.append(np.full(num_samples, seed))
        return np.concatenate(images), np.concatenate(labels), np.concatenate(seed_of)

    def sample_requests(self):
        protocol = SampleRequest("protocol", "the evaluation protocol's samples (reproduces eval.json)",
                                 self.draw_protocol, (PROTOCOL, PER_CLASS, CLASSES, CLASS), selected_by="protocol")
        return (*super().sample_requests(), protocol)

    def draw_protocol(self, given, generate, seed):
        """The "protocol" request: the run's own protocol (its config's eval section), so the trainer's
        eval.json is reproduced exactly; the standard 3 x 5000 for a model without a run config. The
        grid shows the first `per_class` samples of each class."""
        from unigen.eval import N_SAMPLES, SEEDS
        e = self.cfg.get("eval")
        num, seeds = (e.num_samples, range(e.seeds)) if e is not None else (N_SAMPLES, SEEDS)
        images, labels, seed_of = self.protocol_samples(generate, num_samples=num, seeds=seeds)
        arrays = dict(images=images.astype(np.float32), seed=seed_of)
        if self.labelled:
            arrays["labels"] = labels
        arrays.update(self.protocol_annotations(labels, seed_of))
        rows = given_classes(given, self.cfg.data.num_classes) or list(range(self.cfg.data.num_classes))
        order = np.concatenate([np.flatnonzero(labels == c)[:given["per_class"]] for c in rows])
        return Drawn(arrays, len(images), images[order], len(rows), [str(c) for c in rows])

    def protocol_annotations(self, labels, seeds) -> dict:
        """Arrays saved beside the protocol's samples (none here; a text task adds the prompts)."""
        return {}

    def evaluate(self, generate, workdir, model=None):
        e = self.cfg.eval
        if self.cfg.data.name != "digits":
            print(f"no evaluation for data set {self.cfg.data.name!r} (the protocol's classifier is for digits)")
            return None
        from unigen.eval import report
        images, labels, seeds = self.protocol_samples(generate, num_samples=e.num_samples, seeds=range(e.seeds))
        path = os.path.join(workdir, "eval_samples.npz")
        arrays = dict(images=images, seed=seeds) | (dict(labels=labels) if self.labelled else {})
        arrays.update(self.protocol_annotations(labels, seeds))
        np.savez_compressed(path, **arrays)
        rows, text = report(images, labels if self.labelled else None, seeds, title=path)
        print(text)
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(rows, f, indent=2)
        return rows


def released_task(model):
    """(run config, task) to sample a network read by `from_pretrained` without a run config: a
    released DiT with the Gaussian diffusion it was trained with (1000 linear-schedule steps, learned
    variance) and the official sampler's settings (250 DDPM steps, guidance 1.5 on 3 channels)."""
    import ml_collections

    from unigen.models import kind_of
    kind, c = kind_of(model), model.cfg
    if kind.name != "dit":
        raise ConfigError(f"--pretrained samples DiTs; this is a {kind.name!r}: sample its training --workdir")
    cfg = ml_collections.ConfigDict(dict(
        data=dict(name="pretrained", image_size=c.input_size, channels=c.in_channels, num_classes=c.num_classes),
        diffusion=dict(kind="gaussian", num_timesteps=1000, beta_schedule="linear", loss=None),
        sample=dict(sampler="ddpm", steps=250, cfg_scale=1.5, guided_channels="dit", eta=0.0, clip_denoised=False)))
    return cfg, DiffusionTask(cfg, kind, c)
