"""The state a fresh run starts from, and its frozen parts.

The model is built from the config's seed, read from `config.init_from`, or built and then
filled by the task with pretrained parts (`Task.fill_model`, e.g. a frozen encoder read from a
path in the task's config section); the task adds frozen parts of its own (`Task.frozen`, e.g. a text
encoder's table of caption states). Every one of these is a function of the config and the files
it names, so the frozen parts of a work dir can be built again when its `frozen/` folder is
damaged (unigen/training/checkpoint.py).
"""

from __future__ import annotations

import dataclasses

import jax

from unigen.errors import ConfigError
from unigen.models import kind_of
from unigen.training.state import create_train_state


def initial_state(cfg, run, tx, shardings=None, frozen_shardings=None):
    """(TrainState, frozen {"model", "task"}) of a fresh run, placed on the given shardings (the
    default device where None)."""
    patterns = tuple(cfg.train.get("frozen", ()) or ())
    fill = run.task.fill_model  # a task may put pretrained parts into a fresh model (host-side)

    def init():
        model = _init_from(cfg, run) if cfg.init_from else run.model_kind.build(run.model_cfg, cfg.seed)
        if fill is not None and not cfg.init_from:
            model = fill(model)
        _, state, frozen_model = create_train_state(model, tx, cfg.seed, patterns)
        return state, frozen_model

    model_shardings = None if frozen_shardings is None else frozen_shardings["model"]
    if cfg.init_from or fill is not None:  # weights read on the host, then placed
        state, frozen_model = init()
        if shardings is not None:
            state, frozen_model = jax.device_put((state, frozen_model), (shardings, model_shardings))
    else:
        state, frozen_model = jax.jit(init, out_shardings=(shardings, model_shardings))()
    task_frozen = run.task.frozen(cfg.seed)
    if frozen_shardings is not None:
        task_frozen = jax.device_put(task_frozen, frozen_shardings["task"])
    return state, {"model": frozen_model, "task": task_frozen}


def _init_from(cfg, run):
    from unigen.pretrained import from_pretrained
    kind = run.model_kind
    runtime = {f: getattr(run.model_cfg, f) for f in kind.runtime_fields}
    model = from_pretrained(cfg.init_from, **runtime)
    if kind_of(model) is not kind or dataclasses.replace(model.cfg, **runtime) != run.model_cfg:
        raise ConfigError(f"config.init_from={cfg.init_from!r} holds a different architecture "
                          f"({kind_of(model).name}: {model.cfg}) than config.model ({kind.name}: {run.model_cfg})")
    return model
