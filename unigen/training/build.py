"""Config -> (model kind, model config, task), validating the whole config first (docs/design.md §11).

Every error names the config field (`config.train.batch_size=...`) and says the fix, before
anything is compiled or any data is read. Model kinds and tasks come from their registries
(`unigen.models.registry`, `unigen.tasks`); `config.imports` names modules (or .py files)
to import first, so kinds and tasks defined outside unigen register themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import sys

from flax import nnx

from unigen.data.shapes import check_data_section
from unigen.diffusion.registry import sampler_options, samplers_for
from unigen.errors import ConfigError
from unigen.models import get_model_kind
from unigen.tasks import get_task
from unigen.training.state import split_model


def _need(cond: bool, field: str, value, fix: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}={value!r}: {fix}")


def _need_finite(node, prefix: str = "") -> None:
    """Every float in the config finite: config_flags reads `--config.sample.cfg_scale=nan` (or inf,
    1e999) as a float, NaN fails no range check written as `not x < 0` and inf passes `x >= 0`; either
    would train or sample a silent wrong result."""
    items = node.items() if hasattr(node, "items") else enumerate(node)
    for key, value in items:
        field = f"{prefix}.{key}" if prefix and hasattr(node, "items") else f"{prefix}[{key}]" if prefix else key
        if isinstance(value, float):
            _need(math.isfinite(value), field, value, "must be a finite number")
        elif hasattr(value, "items") or isinstance(value, (tuple, list)):
            _need_finite(value, field)


def import_plugins(cfg) -> None:
    """Import each module name or .py file in `config.imports` (registering kinds and tasks)."""
    for name in cfg.get("imports", ()) or ():
        try:
            if name.endswith(".py"):
                path = os.path.abspath(name)
                module = os.path.splitext(os.path.basename(path))[0]
                if module in sys.modules and getattr(sys.modules[module], "__file__", None) == path:
                    continue
                spec = importlib.util.spec_from_file_location(module, path)
                if spec is None or not os.path.exists(path):
                    raise FileNotFoundError(f"no file {path}")
                mod = importlib.util.module_from_spec(spec)
                sys.modules[module] = mod
                spec.loader.exec_module(mod)
            else:
                importlib.import_module(name)
        except (ImportError, FileNotFoundError) as e:
            raise ConfigError(f"config.imports: cannot import {name!r} ({e}); give a module on the Python "
                              f"path or a .py file") from e


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run config builds: the model kind and its config, and the task."""
    model_kind: object
    model_cfg: object
    task: object


def build(cfg) -> Run:
    """The model kind, model config and task of a run config (ConfigError if any is bad)."""
    import_plugins(cfg)
    kind_name = cfg.model.get("kind", "dit")
    task_name = (cfg.get("task") or {}).get("name", "diffusion")
    try:
        kind = get_model_kind(kind_name)
    except ValueError as e:
        raise ConfigError(f"config.model.kind={kind_name!r}: {e}") from None
    try:
        task_cls = get_task(task_name)
    except ValueError as e:
        raise ConfigError(f"config.task.name={task_name!r}: {e}") from None
    try:
        model_cfg = kind.config_for(cfg)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith("config.") else f"config.model: {e}") from None
    try:
        task = task_cls(cfg, kind, model_cfg)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith("config.") else f"config.task: {e}") from None
    return Run(kind, model_cfg, task)


def validate(cfg, num_devices: int | None = None) -> Run:
    """Check every field; returns the Run the config builds."""
    _need_finite(cfg)
    _need(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "use a non-negative int")
    d, t, s = cfg.data, cfg.train, cfg.sample
    check_data_section(d)  # the data package's rules for the fields every run's data has
    for f in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
        _need(isinstance(t[f], int) and t[f] > 0, f"train.{f}", t[f], "must be a positive int")
    _need(t.sample_every >= 0, "train.sample_every", t.sample_every, "must be >= 0 (0 = never)")
    _need(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _need(0 <= t.warmup_steps, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    _need(t.lr_schedule in ("cosine", "constant"), "train.lr_schedule", t.lr_schedule, "use 'cosine' or 'constant'")
    _need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", t.ema_decay, "must be in [0, 1)")
    _need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 = off)")
    _need(t.compute_dtype in ("float32", "bfloat16"), "train.compute_dtype", t.compute_dtype,
          "use 'float32' or 'bfloat16'")
    _need(t.batch_size % t.grad_accum == 0, "train.batch_size", t.batch_size,
          f"must be divisible by train.grad_accum={t.grad_accum}")
    for pattern in t.get("frozen", ()) or ():
        _need(isinstance(pattern, str) and pattern, "train.frozen", t.frozen,
              "use a tuple of regular expressions over parameter paths, e.g. ('text_encoder/',)")
    for rule in t.get("lr_multipliers", ()) or ():
        _need(isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str) and rule[0]
              and isinstance(rule[1], (int, float)) and not isinstance(rule[1], bool) and rule[1] >= 0,
              "train.lr_multipliers", t.lr_multipliers,
              "use a tuple of (regex over parameter paths, factor >= 0) pairs, e.g. (('^encoder/', 0.025),)")
    if num_devices is not None:
        micro = t.batch_size // t.grad_accum
        _need(micro % num_devices == 0 or num_devices == 1, "train.batch_size", t.batch_size,
              f"each micro-batch ({micro}) must split evenly over the {num_devices} devices")
    run = build(cfg)
    _need(not d.get("latent_encoder") or run.task.latents is not None, "data.latent_encoder",
          d.get("latent_encoder"), f"task {run.task.name!r} trains on pixels only; set '' (the tasks whose "
          f"`latents` is a LatentSpace train on a tokenizer's latents)")
    if t.get("frozen"):
        try:
            split_model(nnx.eval_shape(lambda: run.model_kind.build(run.model_cfg)), tuple(t.frozen))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if t.get("lr_multipliers"):
        _check_multipliers_match(run, t.lr_multipliers)
    if run.task.process is not None:  # a task that samples (not e.g. representation learning)
        _validate_sampling(s, run)
    _validate_eval(cfg.get("eval"), run)
    for f in ("data", "fsdp", "tensor", "context"):
        _need(isinstance(cfg.mesh[f], int) and (cfg.mesh[f] >= 1 or cfg.mesh[f] == -1), f"mesh.{f}",
              cfg.mesh[f], "use a positive int, or -1 to fill the remaining devices")
    return run


def _check_multipliers_match(run, multipliers) -> None:
    import re

    from unigen.training.state import path_text
    params = nnx.state(nnx.eval_shape(lambda: run.model_kind.build(run.model_cfg)), nnx.Param)
    paths = [path_text(p) for p, _ in nnx.to_flat_state(params)]
    for pattern, _ in multipliers:
        _need(any(re.search(pattern, p) for p in paths), "train.lr_multipliers", pattern,
              f"matches no parameter; parameter paths look like {paths[0]!r}")


def _validate_eval(e, run) -> None:
    """The evaluation's sizes: 0 would not mean a default (an empty protocol, a batch of nothing).
    A task that samples draws eval.num_samples per seed, for eval.seeds seeds; the tokenizers
    and representation tasks draw none (their configs say num_samples=0)."""
    if e is None:
        return
    if "batch_size" in e:
        _need(isinstance(e.batch_size, int) and e.batch_size >= 1, "eval.batch_size", e.batch_size,
              "must be a positive int")
    if run.task.process is not None and e.get("at_end", True):
        for f in ("num_samples", "seeds"):
            if f in e:
                _need(isinstance(e[f], int) and e[f] >= 1, f"eval.{f}", e[f],
                      "must be a positive int (or set eval.at_end=False to skip the evaluation)")


def _validate_sampling(s, run) -> None:
    samplers = samplers_for(run.task.process)  # the registered samplers whose needs the objective meets
    _need(s.sampler in samplers, "sample.sampler", s.sampler,
          f"use one of {samplers} for a {type(run.task.process).__name__} (config.diffusion.kind)")
    sampler_options(s)  # the sampler's own fields, by its registered schema (ConfigError naming a bad one)
    _need(s.steps >= 1, "sample.steps", s.steps, "must be >= 1")
    _need(s.cfg_scale >= 0, "sample.cfg_scale", s.cfg_scale, "must be >= 0 (1 = no guidance)")
    if s.cfg_scale != 1.0 and run.task.guidance_needs_null:
        nulls = run.task.null_cond()
        _need(nulls and all(v is not None for v in nulls.values()), "sample.cfg_scale", s.cfg_scale,
              "guidance needs a conditional model trained with condition dropout "
              "(e.g. model.class_dropout_prob > 0); or set 1.0")
