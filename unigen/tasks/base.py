"""Training tasks by name (docs/design.md §12): `config.task.name` picks one.

A task owns everything between the data and the network: what a batch holds, the loss (with
condition dropout), the frozen parts it needs besides the model, how to sample conditions for
grids, and the evaluation hook the trainer calls at the end. The trainer, the step, the
generator and the loaders do not change when a task arrives; one registered from outside
`unigen/` works the same.

    @register_task("my_task")
    class MyTask(Task): ...
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion.objective import per_example, split_keys
from unigen.registry import Registry
from unigen.tasks.requests import CLASS, CLASSES, PER_CLASS, Drawn, SampleRequest, given_classes


class Task:
    """The interface the trainer and `infer/sample.py` use. Subclasses set `process`,
    `sample_shape`, `clip` and implement `dataset` and `loss`. A task that trains no
    generative model (e.g. representation learning) sets `process = None`: the trainer then
    draws no sample grids and `evaluate` gets no `generate`."""

    name: str = ""
    process: Any = None                 # the objective (unigen.diffusion.objective protocol)
    sample_shape: tuple[int, ...] = ()  # one sample, e.g. (H, W, C)
    clip: bool = True                   # samples are pixels in [-1, 1] (False: latents)
    needs_forward_mode: bool = False    # the loss uses jax.jvp of the network (no CPU custom VJPs)
    # prepare_conditions(model, cond, keys) -> cond: the model's conditions computed from the
    # given ones (and each sample's key) before sampling; None = the conditions as given.
    prepare_conditions = None
    # fill_model(model) -> model: called once on the host with a freshly built model (not one
    # from init_from or a checkpoint) to put pretrained parts into it before training, e.g. a
    # frozen encoder read from a path (unigen/tasks/rae.py). None = train from the built model.
    fill_model = None
    # Classifier-free guidance replaces conditions by their null values (`null_cond`), so
    # sample.cfg_scale != 1 needs them; a task whose guidance needs none (UniDiffuser's
    # unconditional branch is the condition replaced by noise) sets False.
    guidance_needs_null = True
    # Class-conditional: `conditions_for_labels` maps class labels to conditions, grids have a row
    # per class and saved samples carry their `labels`.
    labelled: bool = False
    # The tokenizer latent space the task trains in (unigen/tasks/latent_space.py), set from
    # config.data.latent_encoder; None = the task trains on pixels (and refuses a latent_encoder).
    latents = None

    def __init__(self, cfg, model_kind, model_cfg):
        self.cfg, self.model_kind, self.model_cfg = cfg, model_kind, model_cfg
        self.conditions = model_kind.conditions(model_cfg)  # name -> Condition

    # ---- data -------------------------------------------------------------------------------
    def dataset(self, split: str, *, batch_size: int, seed: int, shard: int, shards: int):
        """A checkpointable iterable (grain: get_state / set_state) of dicts of numpy arrays,
        each with a leading batch axis of `batch_size` (this process's share)."""
        raise NotImplementedError

    # ---- frozen parts -----------------------------------------------------------------------
    def frozen(self, seed: int) -> dict:
        """Arrays the loss needs but never trains (e.g. a text encoder's weights), built once;
        they travel beside the train state (not donated, optimised, EMA'd or checkpointed with
        every step)."""
        return {}

    # ---- loss -------------------------------------------------------------------------------
    def loss(self, model, batch: dict, rng, frozen: dict) -> tuple[jax.Array, dict]:
        """(scalar loss, dict of scalar metrics) for one (micro-)batch. `rng` holds one key per
        example (draw with `unigen.diffusion.objective.per_example`), so a micro-batched step
        draws what the whole batch would."""
        raise NotImplementedError

    def drop_conditions(self, cond: dict, rng) -> dict:
        """Replace each named condition by its null value with its dropout probability, per
        example: the same null condition that guidance uses at sampling time."""
        out = dict(cond)
        # One key per group (a condition without a group is its own), in sorted order.
        groups = sorted({self._group(name) for name in cond})
        keys = dict(zip(groups, split_keys(rng, max(len(groups), 1))))
        for name, value in sorted(cond.items()):
            spec = self.conditions.get(name)
            if spec is None or not spec.dropout:
                continue
            key = keys[self._group(name)]
            drop = per_example(key, value.shape[0], lambda k: jax.random.uniform(k, ())) < spec.dropout
            null = jnp.broadcast_to(jnp.asarray(spec.null, value.dtype), value.shape)
            out[name] = jnp.where(drop.reshape((-1,) + (1,) * (value.ndim - 1)), null, value)
        return out

    def _group(self, name: str) -> str:
        spec = self.conditions.get(name)
        return f"group:{spec.group}" if spec is not None and spec.group else f"name:{name}"

    def null_cond(self) -> dict:
        return {name: c.null for name, c in self.conditions.items()}

    # ---- sampling and evaluation ------------------------------------------------------------
    def conditions_for_labels(self, labels: np.ndarray) -> dict:
        """The model's conditions that ask for digit/class `labels` ({} when unconditional)."""
        return {}

    def grid(self, per_row: int, classes=None) -> tuple[dict, int, int]:
        """(conditions, number of samples, rows) for a sample grid."""
        return {}, per_row * 4, 4

    def grid_labels(self, per_row: int, classes=None) -> list[str] | None:
        """What each row of `grid(per_row, classes)` was asked for (a class id, a prompt), written at
        its left in the PNG; None = rows without labels."""
        return None

    def sample_requests(self) -> tuple[SampleRequest, ...]:
        """What `infer/sample.py` can draw from this task (unigen/tasks/requests.py), the default
        first: here the sample grid (a row per class when `labelled`); none without a sampler."""
        if self.process is None:
            return ()
        arguments = (PER_CLASS, CLASSES, CLASS) if self.labelled else (PER_CLASS,)
        what = "one row per class" if self.labelled else "unconditional"
        return (SampleRequest("grid", f"a sample grid, {what}", self.draw_grid, arguments),)

    def draw_grid(self, given: dict, generate, seed: int) -> Drawn:
        """The "grid" request: `per_class` samples for each class asked for (every class by default)."""
        per_row, classes = given["per_class"], None
        if self.labelled:
            classes = given_classes(given, self.cfg.data.num_classes)
            classes = list(range(self.cfg.data.num_classes)) if classes is None else classes
        cond, num, rows = self.grid(per_row, classes=classes)
        images = generate(cond, num, seed, label="sample")
        arrays = dict(images=images.astype(np.float32))
        if self.labelled:
            arrays["labels"] = np.repeat(np.asarray(classes, np.int32), per_row)
        return Drawn(arrays, len(images), images, rows, self.grid_labels(per_row, classes=classes))

    def generator(self, sample_cfg, graphdef, **kwargs):
        """The sampler for grids, evaluation and infer/sample.py: `Generator.from_config` by default
        (kwargs: mesh=, rules=, and overrides such as steps=). A task whose network is not called
        `model(x, t, **cond)` returns its own object with the Generator's `__call__`; options it
        adds (e.g. UniDiffuser's `mode=`) reach it through `generate(..., **options)`."""
        from unigen.sampling import Generator
        return Generator.from_config(sample_cfg, self, graphdef, **kwargs)

    def decode_samples(self, samples: np.ndarray) -> np.ndarray:
        """The generator's samples as images in [-1, 1] (a latent task decodes its latents)."""
        return samples

    def evaluate(self, generate, workdir: str, model=None) -> dict | None:
        """The final evaluation; `generate(cond, num, seed) -> numpy images` (decoded; None when the
        task has no `process`), `model` the trained (EMA) module. None = no evaluation."""
        return None


_TASKS: Registry[type] = Registry("task")


def register_task(name: str):
    """Class decorator: make a Task subclass available as `config.task.name = name`."""
    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) takes a Task subclass, got {cls!r}")
        cls.name = name
        return _TASKS.add(name, cls)
    return add


def get_task(name: str) -> type:
    return _TASKS.get(name)


def task_names() -> list[str]:
    return _TASKS.names()
