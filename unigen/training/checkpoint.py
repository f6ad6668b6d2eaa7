"""Checkpoints that survive (docs/design.md §10): orbax `CheckpointManager` in `<workdir>/checkpoints`.

Each step directory holds the whole `TrainState` (params, AdamW state, EMA, step, rng, mutable
model state; saved sharded, restored onto whatever mesh the restoring run uses) and the data
iterator's position (JSON). The frozen parts (unigen/training/state.py) are written once per
work dir, into `<workdir>/frozen`. Orbax writes into a temporary directory and renames it when
complete, so a run killed at any moment, even during a save, leaves only whole
checkpoints; leftovers are cleaned up on the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from unigen.convert.registry import register_folder, register_task_frozen
from unigen.errors import CheckpointError, ConfigError


class DamagedCheckpoint(CheckpointError):
    """A checkpoint step that cannot be read (as opposed to one written by another config)."""

CONFIG_NAME = "config.json"




def is_workdir(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONFIG_NAME)) and os.path.isdir(os.path.join(path, "checkpoints"))


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _describe(tree) -> dict[str, tuple]:
    """{'params/blocks/qkv/kernel': shape} for a state tree or orbax's metadata of one
    (the two spell Variable values and dataclass fields differently: normalise)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        key = "/".join(n for n in names if n != "value")
        shape = getattr(leaf, "shape", None)
        out[key] = tuple(shape) if shape is not None else None
    return out


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 2, asynchronous: bool = False):
        """`asynchronous`: `save` returns once the state is copied off the devices and writes in
        a background thread (the next save, `close` and restores wait for it). A kill during the
        write leaves orbax's temporary folder, which the next start removes, so exact resume holds."""
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.asynchronous = bool(asynchronous)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=self.asynchronous)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=dict(
            state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler()))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
        if not self.asynchronous:
            self.manager.wait_until_finished()

    def _check_compatible(self, step: int, abstract_state):
        """The checkpoint's metadata tree, after checking it holds what `abstract_state` needs."""
        try:
            meta = self.manager.item_metadata(step)["state"]
        except Exception as e:  # unreadable metadata = a damaged checkpoint
            raise DamagedCheckpoint(f"{type(e).__name__}: {_first_line(e)}") from e
        if meta is None:
            return None
        want, have = _describe(abstract_state), _describe(meta)
        for key, shape in want.items():
            if key not in have:
                raise CheckpointError(f"checkpoint {self.directory}/{step} has no entry {key} "
                                      f"(the model or optimizer config differs from the run that wrote it)")
            if shape is not None and have[key] is not None and have[key] != shape:
                raise CheckpointError(
                    f"checkpoint {self.directory}/{step}: {key} has shape {have[key]}, this run "
                    f"expects {shape} (the model config differs from the run that wrote it)")
        extra = sorted(set(have) - set(want))
        if extra:
            raise CheckpointError(f"checkpoint {self.directory}/{step} has entries this run does not "
                                  f"know: {extra[:5]} (the config differs from the run that wrote it)")
        return meta

    def restore(self, step: int, abstract_state, *, with_data: bool = True):
        """(state, data_state) at `step`. Leaves of `abstract_state` that carry a sharding are
        restored onto it (any mesh, whatever mesh saved them); the others onto one device."""
        meta = self._check_compatible(step, abstract_state)
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_state = jax.tree.map(
            lambda a: a if getattr(a, "sharding", None) is not None
            else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device), abstract_state)
        target = abstract_state
        # Checkpoints written before the state had a `mutable` entry restore when there is none
        # to fill (a model without BatchStats); the restored state gets the empty entry back.
        legacy = meta is not None and hasattr(meta, "keys") and "mutable" not in meta.keys() \
            and hasattr(abstract_state, "mutable") and not jax.tree.leaves(abstract_state.mutable)
        if legacy:
            target = {k: v for k, v in vars(abstract_state).items() if k != "mutable"}
        items = dict(state=ocp.args.StandardRestore(target))
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        try:
            with _quiet_async_errors():
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # the metadata matched this config: the data is damaged
            raise DamagedCheckpoint(f"{type(e).__name__}: {_first_line(e)}") from e
        state = abstract_state.replace(**restored["state"]) if legacy else restored["state"]
        return state, (restored["data"] if with_data else None)

    def restore_latest(self, abstract_state):
        """(step, state, data_state) of the newest readable checkpoint, or None when there is
        none. A step that cannot be read is moved aside (kept, never deleted) with a two-line
        warning, and the next newest is tried; when every step was damaged, a CheckpointError."""
        moved = []
        while (step := self.latest_step()) is not None:
            try:
                return (step, *self.restore(step, abstract_state))
            except DamagedCheckpoint as e:
                moved.append(self.move_aside(step))
                if jax.process_index() == 0:
                    print(f"warning: checkpoint {self.directory}/{step} cannot be read ({e}); moved it to "
                          f"{moved[-1]}\nwarning: resuming from the newest readable checkpoint before it",
                          file=sys.stderr, flush=True)
        if moved:
            raise CheckpointError(f"no readable checkpoint is left in {self.directory} (the damaged ones are in "
                                  f"{os.path.dirname(moved[-1])}): use a new --workdir, or move a good step back")
        return None

    def move_aside(self, step: int) -> str:
        """Move step `step` to <workdir>/damaged_checkpoints/<step>-<time> (process 0; the others
        wait for it) and forget it; returns the new path."""
        parent = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        dst = os.path.join(parent, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(parent, exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"unigen_move_aside_{step}")
        self.manager.reload()
        return dst

    def close(self):
        self.manager.close()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0].split(". See full")[0][:200] if text else ""


def _is_orphaned_read_error(exc, text: str = "") -> bool:
    """True for the leftovers of one failed orbax restore: after the first array read of a
    damaged step fails, the reads of the other arrays are abandoned and each fails later on its
    own ('Encountered error while reading array index', or 'Event loop is closed' once its loop
    is gone)."""
    text = f"{text} {exc!s}" if exc is not None else text
    return "Encountered error while reading array index" in text or "_read_array_index" in text \
        or (isinstance(exc, RuntimeError) and "Event loop is closed" in text)


def _drop_orphaned_read_errors(unraisable) -> None:
    """Python reports each abandoned read (see `_is_orphaned_read_error`) as an unraisable
    exception when it is collected: dozens of tracebacks around one real error. Drop exactly
    those; pass every other unraisable exception on."""
    name = getattr(unraisable.object, "__qualname__", "") or ""
    if _is_orphaned_read_error(unraisable.exc_value, name):
        return
    _PREVIOUS_HOOK[0](unraisable)


class _OrphanedReadErrorFilter(logging.Filter):
    """asyncio logs the same abandoned reads as "... exception was never retrieved" when their
    futures are collected, which may be long after the restore returned (so a log level set
    around the restore does not catch them). Drop exactly those records; keep every other."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not ("never retrieved" in record.getMessage() and _is_orphaned_read_error(exc, record.getMessage()))


_PREVIOUS_HOOK = [sys.unraisablehook]
_ASYNCIO_FILTER = _OrphanedReadErrorFilter()


@contextlib.contextmanager
def _quiet_async_errors():
    """Silence the asyncio logger while restoring; from the first restore on, drop the orphaned
    read errors of a damaged step wherever they surface later (`_drop_orphaned_read_errors`,
    `_OrphanedReadErrorFilter`). The restore's own error still propagates."""
    if sys.unraisablehook is not _drop_orphaned_read_errors:
        _PREVIOUS_HOOK[0] = sys.unraisablehook
        sys.unraisablehook = _drop_orphaned_read_errors
    log = logging.getLogger("asyncio")
    if _ASYNCIO_FILTER not in log.filters:
        log.addFilter(_ASYNCIO_FILTER)
    previous_level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous_level)


def save_config(workdir: str, cfg_json: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(cfg_json)
    os.replace(tmp, path)  # atomic: a kill never leaves half a config


def read_config(workdir: str):
    """The config a work dir's run was started with (its config.json; a damaged one is a CheckpointError)."""
    import ml_collections

    from unigen.files import read_json
    path = os.path.join(workdir, CONFIG_NAME)
    fix = "restore it from a copy (it is the config the run was started with), or train in a new --workdir"
    config = read_json(path, error=CheckpointError, fix=fix)
    # Every run's config has these sections (unigen/training/build.py reads them); an object without
    # them (an emptied or foreign file) would otherwise fail as a KeyError deep in the model build.
    missing = [k for k in ("data", "model", "train") if not isinstance(config.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path} is not a unigen training config (no {', '.join(missing)} section); {fix}")
    return ml_collections.ConfigDict(config)  # as unigen.training.config.from_json builds it


def abstract_train_state(cfg, run=None):
    """(graphdef, abstract TrainState, abstract frozen tree, Run) for a config, without allocating."""
    from flax import nnx

    from unigen.training.build import build
    from unigen.training.state import create_train_state, make_optimizer, split_model

    run = run or build(cfg)
    tx, _ = make_optimizer(cfg.train)
    frozen_patterns = tuple(cfg.train.get("frozen", ()) or ())

    def init():
        model = run.model_kind.build(run.model_cfg, cfg.seed)
        _, state, frozen_model = create_train_state(model, tx, cfg.seed, frozen_patterns)
        return state, {"model": frozen_model, "task": run.task.frozen(cfg.seed)}

    graphdef = split_model(nnx.eval_shape(lambda: run.model_kind.build(run.model_cfg, cfg.seed)), frozen_patterns)[0]
    state, frozen = jax.eval_shape(init)
    return graphdef, state, frozen, run


FROZEN_DIR = "frozen"


def save_frozen(workdir: str, frozen) -> None:
    """Write the frozen parts once per work dir (nothing when there are none)."""
    if not jax.tree.leaves(frozen):
        return
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(os.path.abspath(workdir), FROZEN_DIR), frozen, force=True)


def restore_frozen(workdir: str, abstract_frozen):
    """The frozen parts written by `save_frozen`, onto the abstract tree's shardings."""
    if not jax.tree.leaves(abstract_frozen):
        return abstract_frozen
    path = os.path.join(os.path.abspath(workdir), FROZEN_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"{workdir} has checkpoints but no {FROZEN_DIR}/ (the frozen parts this config "
                              f"needs): use a new --workdir, or restore that folder")
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_frozen = jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) is not None
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device), abstract_frozen)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, abstract_frozen)


def load_model_for_inference(workdir: str, *, use_ema: bool = True, step: int | None = None, **overrides):
    """The model of a training work dir with its latest (EMA) parameters, on one device.
    `overrides` change runtime fields (scan_layers, attention_backend, dtype, ...)."""
    import dataclasses

    from flax import nnx

    from unigen.convert.unigen_format import build_filled, module_to_flat
    from unigen.training.build import import_plugins

    cfg = read_config(workdir)
    import_plugins(cfg)
    graphdef, abstract, abstract_frozen, run = abstract_train_state(cfg)
    ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{workdir} has no checkpoint yet")
        state, _ = ckpt.restore(step, abstract, with_data=False)
    finally:
        ckpt.close()
    frozen = restore_frozen(workdir, abstract_frozen)
    model = nnx.merge(graphdef, state.ema if use_ema else state.params, state.mutable, frozen["model"])
    if not overrides:
        return model
    kind = run.model_kind
    bad = sorted(set(overrides) - set(kind.runtime_fields))
    if bad:
        raise ConfigError(f"overrides {bad} would change the architecture of model kind {kind.name!r}; "
                         f"allowed: {sorted(kind.runtime_fields)}")
    flat = module_to_flat(model, kind.stacked(run.model_cfg))
    new_cfg = dataclasses.replace(run.model_cfg, **overrides)
    return build_filled(kind.module, new_cfg, flat, workdir)


# Work dirs as a source of `unigen.pretrained.from_pretrained`: registered when this module is imported,
# which unigen.convert.registry does by name (its ABOVE) when a lookup finds no loader, so the loaders
# below training (a task's frozen encoder, `python -m unigen.convert`) read work dirs without importing
# training, which imports them.
@register_task_frozen("unigen training work dir", is_workdir)
def load_task_frozen(workdir: str) -> dict:
    """The task's frozen parts of a work dir (e.g. an LZN classifier's reference images), as
    numpy arrays on the host; {} when the task has none."""
    cfg = read_config(workdir)
    from unigen.training.build import import_plugins
    import_plugins(cfg)
    _, _, abstract_frozen, _ = abstract_train_state(cfg)
    frozen = restore_frozen(workdir, abstract_frozen)
    return jax.tree.map(np.asarray, dict(frozen["task"]))


@register_folder("unigen training work dir", is_workdir)
def _load_workdir(path: str, **overrides):
    return load_model_for_inference(path, **overrides)
