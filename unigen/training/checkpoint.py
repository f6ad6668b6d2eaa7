"""Checkpoints that survive (docs/design.md §10): orbax `CheckpointManager` in `<workdir>/checkpoints`.

Each step directory holds the whole `TrainState` (params, AdamW state, EMA, step, rng, mutable
model state; saved sharded, restored onto whatever mesh the restoring run uses) and the data
iterator's position (JSON). The frozen parts (unigen/training/state.py) are written once per
work dir, into `<workdir>/frozen`. Orbax writes into a temporary directory and renames it when
complete, so a run killed at any moment, even during a save, leaves only whole
checkpoints; leftovers are cleaned up on the next start.

Damage is survived the same way everywhere: a step that cannot be read is moved to
`<workdir>/damaged_checkpoints/` by a training (a reader, such as sampling, leaves it in place)
and the step before it is used; frozen parts that cannot be read are built again from the
config (`frozen_parts`).
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
from unigen.errors import CheckpointError, ConfigError, UnigenError
from unigen.training import disk


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
    def __init__(self, workdir: str, *, keep: int = 2, asynchronous: bool = False, read_only: bool = False):
        """`asynchronous`: `save` returns once the state is copied off the devices and writes in
        a background thread (the next save, `close` and restores wait for it). A kill during the
        write leaves orbax's temporary folder, which the next start removes, so exact resume holds.
        `read_only` (sampling, a reader of someone's work dir): nothing is created, cleaned up or
        moved, so a training running on the same work dir keeps its in-flight save."""
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.asynchronous = bool(asynchronous) and not read_only
        self.read_only = bool(read_only)
        self._needed = None  # bytes the save in flight takes (for the message if it fails)
        if read_only:  # every option read_only=True needs spelled out (orbax warns about each it changes)
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, cleanup_tmp_directories=False, max_to_keep=None,
                save_interval_steps=0, enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=self.asynchronous)
        _quiet_damage_reports()
        if not read_only:
            disk.quiet_disk_full_reports()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=dict(
            state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler()))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        """Save step `step`; DiskFull (one line: the folder, the space a checkpoint takes, the
        space free) when the disk cannot hold it, checked before orbax writes anything, or
        when the write fails for lack of space anyway."""
        self._needed = self.bytes_needed(state)
        _check_space_everywhere(self.directory, self._needed)
        with disk.writing(self.directory, self._needed, _RESUME_HINT):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
            if not self.asynchronous:
                self.manager.wait_until_finished()

    def bytes_needed(self, state) -> int:
        """What the next checkpoint takes on disk: the newest one's size, or the state's bytes
        (uncompressed) before the first; with 2% + 1 MB to spare (steps differ a little in size,
        and the metrics and TensorBoard logs are written meanwhile)."""
        size = 0
        for step in sorted(self.manager.all_steps(), reverse=True):  # one being written has no folder yet
            size = disk.folder_bytes(os.path.join(self.directory, str(step)))
            if size:
                break
        size = size or sum(int(leaf.size) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
        return size + size // 50 + (1 << 20)

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

    def restore_latest(self, abstract_state, *, with_data: bool = True, move_damaged: bool = True):
        """(step, state, data_state) of the newest readable checkpoint, or None when there is
        none. A step that cannot be read is moved aside (`move_damaged`; kept, never deleted) or
        left where it is (a reader), and the one before it is tried; each is named in a warning
        once a readable step is found. When every step is damaged: one CheckpointError, naming them."""
        damaged = []  # (step, reason, where it went or None)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = (step, *self.restore(step, abstract_state, with_data=with_data))
            except DamagedCheckpoint as e:
                damaged.append((step, str(e), self.move_aside(step) if move_damaged else None))
                continue
            if damaged and jax.process_index() == 0:
                for bad, reason, dst in damaged:
                    where = f"moved it to {dst}" if dst else "left it in place"
                    print(f"warning: checkpoint {self.directory}/{bad} cannot be read ({reason}); {where}",
                          file=sys.stderr, flush=True)
                print(f"warning: {'resuming from' if move_damaged else 'using'} step {step}, the newest readable "
                      f"checkpoint", file=sys.stderr, flush=True)
            return restored
        if damaged:
            steps = ", ".join(str(d[0]) for d in damaged)
            first = f"step {damaged[0][0]}: {damaged[0][1]}"
            if move_damaged:
                raise CheckpointError(
                    f"no readable checkpoint is left in {self.directory} (steps {steps} cannot be read, {first}; "
                    f"they are in {os.path.dirname(damaged[0][2])}): use a new --workdir, or move a good step back")
            raise CheckpointError(f"no checkpoint in {self.directory} can be read (steps {steps}, {first}): "
                                  f"restore a good step from a copy, or train again")
        return None

    def move_aside(self, step: int) -> str:
        """Move step `step` to <workdir>/damaged_checkpoints/<step>-<time> (process 0; the others
        wait for it) and forget it; returns the new path."""
        dst = _move_to_damaged(os.path.dirname(self.directory), os.path.join(self.directory, str(step)), str(step))
        self.manager.reload()
        return dst

    def close(self):
        """Wait for a save in flight (its failure for lack of space is a DiskFull) and close."""
        with disk.writing(self.directory, self._needed, _RESUME_HINT):
            self.manager.close()


_RESUME_HINT = "; then rerun: the run resumes from its last whole checkpoint"


def _check_space_everywhere(directory: str, needed: int) -> None:
    """`disk.has_space`, decided by process 0 for every process (they share the file system),
    so all of them stop together rather than the others waiting in orbax for a save that never
    comes."""
    short = jax.process_index() == 0 and not disk.has_space(directory, needed)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        short = bool(multihost_utils.broadcast_one_to_all(np.int32(short)))
    if short:
        raise disk.disk_full(directory, needed, _RESUME_HINT)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0].split(". See full")[0][:200] if text else ""


def _is_orphaned_read_error(exc, text: str = "") -> bool:
    """True for the leftovers of one failed orbax restore: after the first array read of a
    damaged step fails, the reads of the other arrays are abandoned and each fails later on its
    own ('Encountered error while reading array index', tensorstore's 'Error reading "<array>" in
    OCDBT database ...', or 'Event loop is closed' once its loop is gone)."""
    text = f"{text} {exc!s}" if exc is not None else text
    return "Encountered error while reading array index" in text or "_read_array_index" in text \
        or ("Error reading" in text and "OCDBT database" in text) \
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


class _DamageReportFilter(logging.Filter):
    """orbax logs an ERROR record for each unreadable step metadata file it meets while listing
    the steps (several per damaged step); the restore that follows reports the same damage once,
    as a warning or a CheckpointError naming the step. Drop exactly those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to read Metadata file")


_DAMAGE_FILTER = _DamageReportFilter()


def _quiet_damage_reports() -> None:
    log = logging.getLogger("absl")
    if _DAMAGE_FILTER not in log.filters:
        log.addFilter(_DAMAGE_FILTER)


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
    """The frozen parts written by `save_frozen`, onto the abstract tree's shardings (DamagedCheckpoint
    when the folder is missing or cannot be read)."""
    if not jax.tree.leaves(abstract_frozen):
        return abstract_frozen
    path = os.path.join(os.path.abspath(workdir), FROZEN_DIR)
    if not os.path.isdir(path):
        raise DamagedCheckpoint("missing")
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_frozen = jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) is not None
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device), abstract_frozen)
    try:
        with _quiet_async_errors(), ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path, abstract_frozen)
    except Exception as e:  # the tree is the config's (the config was checked): the files are damaged
        raise DamagedCheckpoint(f"{type(e).__name__}: {_first_line(e)}") from e


def frozen_parts(workdir: str, abstract_frozen, rebuild, *, repair: bool):
    """The work dir's frozen parts; when `frozen/` is missing or damaged, `rebuild()` builds them
    again from the config and the files it names (unigen/training/initial.py: the seed, init_from,
    the frozen encoders), with a warning. `repair` (a training run, which holds the work dir's
    lock): the damaged folder is moved to damaged_checkpoints/ and the rebuilt parts are written
    in its place; a reader (sampling) leaves the work dir as it is. A rebuild that fails (an encoder
    path gone) is a CheckpointError naming both causes."""
    path = os.path.join(os.path.abspath(workdir), FROZEN_DIR)
    try:
        return restore_frozen(workdir, abstract_frozen)
    except DamagedCheckpoint as e:
        reason = str(e)
    try:
        frozen = rebuild()
    except UnigenError as e:
        raise CheckpointError(f"{path} ({reason}) holds the frozen parts this work dir needs, and they cannot be "
                              f"built again from its config: {e}; restore {FROZEN_DIR}/ from a copy, or use a new "
                              f"--workdir") from None
    if not repair:
        what = "built them again from the config for this run (a training run on this work dir writes them back)"
    elif reason == "missing":
        save_frozen(workdir, frozen)
        what = "built them again from the config and wrote them there"
    else:
        what = f"moved it to {_move_to_damaged(os.path.abspath(workdir), path, 'frozen')}; built them again from the config and wrote them back"
        save_frozen(workdir, frozen)
    if jax.process_index() == 0:
        print(f"warning: the frozen parts in {path} cannot be read ({reason}); {what}", file=sys.stderr, flush=True)
    return frozen


def _move_to_damaged(workdir: str, path: str, name: str) -> str:
    """Move `path` to <workdir>/damaged_checkpoints/<name>-<time> (process 0; the others wait)."""
    parent = os.path.join(workdir, "damaged_checkpoints")
    dst = os.path.join(parent, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
        os.makedirs(parent, exist_ok=True)
        os.rename(path, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"unigen_move_aside_{name}")
    return dst


def rebuild_frozen(cfg, run):
    """A function building the frozen parts of a fresh run of `cfg` (on the default device)."""
    def rebuild():
        from unigen.training.initial import initial_state
        from unigen.training.state import make_optimizer
        return initial_state(cfg, run, make_optimizer(cfg.train)[0])[1]
    return rebuild


def _metrics_note(workdir: str) -> str:
    """Why a work dir without checkpoints may surprise: its metrics say it trained."""
    from unigen.training.metrics import MetricsLog
    last = MetricsLog.last_logged_step(workdir)
    return (f" although its metrics.jsonl logs steps up to {last} (its checkpoints were deleted or moved?)"
            if last else "")


def load_model_for_inference(workdir: str, *, use_ema: bool = True, step: int | None = None, **overrides):
    """The model of a training work dir with its latest (EMA) parameters, on one device.
    `overrides` change runtime fields (scan_layers, attention_backend, dtype, ...). A damaged
    latest checkpoint falls back to the newest readable one, as a resumed training does, but
    nothing in the work dir is moved or written (a training may be running there)."""
    import dataclasses

    from flax import nnx

    from unigen.convert.unigen_format import build_filled, module_to_flat
    from unigen.training.build import import_plugins

    cfg = read_config(workdir)
    import_plugins(cfg)
    graphdef, abstract, abstract_frozen, run = abstract_train_state(cfg)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        if step is None:
            restored = ckpt.restore_latest(abstract, with_data=False, move_damaged=False)
            if restored is None:
                raise CheckpointError(f"{workdir} has no checkpoint yet{_metrics_note(workdir)}")
            state = restored[1]
        else:
            try:
                state, _ = ckpt.restore(step, abstract, with_data=False)
            except DamagedCheckpoint as e:
                raise CheckpointError(f"checkpoint {ckpt.directory}/{step} cannot be read ({e}): pick another "
                                      f"step, or leave step unset for the newest readable one") from None
    finally:
        ckpt.close()
    frozen = frozen_parts(workdir, abstract_frozen, rebuild_frozen(cfg, run), repair=False)
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
    """The task's frozen parts of a work dir (e.g. a classifier's reference images), as
    numpy arrays on the host; {} when the task has none."""
    cfg = read_config(workdir)
    from unigen.training.build import import_plugins
    import_plugins(cfg)
    _, _, abstract_frozen, run = abstract_train_state(cfg)
    frozen = frozen_parts(workdir, abstract_frozen, rebuild_frozen(cfg, run), repair=False)
    return jax.tree.map(np.asarray, dict(frozen["task"]))


@register_folder("unigen training work dir", is_workdir)
def _load_workdir(path: str, **overrides):
    return load_model_for_inference(path, **overrides)
