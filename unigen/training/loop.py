"""The trainer: one loop for 1 CPU, 8 fake devices, many GPUs or many hosts, any model kind
and any task.

    train(cfg, workdir)   # validate -> mesh -> state (fresh, init_from, or resumed) -> steps

The step is compiled once with explicit in/out shardings and the state donated (the frozen
parts are an argument of their own, never donated). Batches are dicts of named arrays from
the task's data set, this process's share, placed with `make_array_from_process_local_data`.
Rerunning on an existing work dir resumes from its latest checkpoint, with the data iterator
where it was: the result is bitwise the same as an uninterrupted run on the same machine.
Sample grids and the task's evaluation sample over the whole mesh, in every process.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

import unigen.parallel as parallel
from unigen.cli_args import check_output_folder
from unigen.config_sections import may_change_on_resume, value_before
from unigen.errors import CheckpointError, UnigenError
from unigen.images import save_grid
from unigen.training import checkpoint as ckpt_lib
from unigen.training import disk
from unigen.training import lock as lock_lib
from unigen.training.build import validate
from unigen.training.config import to_json
from unigen.training.initial import initial_state
from unigen.training.metrics import MetricsLog, log_eval
from unigen.training.state import make_optimizer
from unigen.training.step import make_train_step

# The trainer's own fields a resumed run may change; anything else must match the run that wrote the
# work dir, unless the part that owns it declares otherwise (unigen/config_sections.py: the data
# paths, the layers' execution options, ...). Optimizer hyperparameters may change (to recover from a
# divergence); the state's structure does not.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
                    "train.keep_checkpoints", "train.lr", "train.grad_clip", "train.warmup_steps",
                    "train.lr_schedule", "train.weight_decay", "train.lr_multipliers", "train.b1", "train.b2",
                    "train.ema_decay", "sample", "eval", "mesh", "imports", "train.cpu_custom_vjps",
                    "train.async_checkpointing")
# The trainer's fields added after work dirs were first written, with the value an older run had
# (a section's owner declares its own: config_sections.value_before).
INTRODUCED = {"model.kind": "dit", "task.name": "diffusion", "train.frozen": []}


def _may_change(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS) or may_change_on_resume(key)


def _value_before(key: str):
    return (True, INTRODUCED[key]) if key in INTRODUCED else value_before(key)


class TrainingDiverged(UnigenError, RuntimeError):
    pass


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_same_run(workdir: str, cfg) -> None:
    old = _flatten(json.loads(to_json(ckpt_lib.read_config(workdir))))
    new = _flatten(json.loads(to_json(cfg)))
    for key in sorted(set(old) | set(new)):
        if _may_change(key):
            continue
        if key not in old and _value_before(key) == (True, new.get(key)):
            continue  # written before the field existed, with the value it then implied
        if old.get(key) != new.get(key):
            raise CheckpointError(
                f"{workdir} was trained with config.{key}={old.get(key)!r}, this run asks for "
                f"{new.get(key)!r}: use a new --workdir, or the same value to resume")


def _abstract_with(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def train(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Train (or resume) per `cfg` in `workdir`; returns the final metrics (and evaluation).

    Validate, then write: everything the run reads (the config, the data set, `init_from`, the
    frozen encoders) is read and checked before its first write into the work dir, so a run that
    fails on a bad path leaves no work dir behind to refuse its corrected rerun. Every write
    happens under the work dir's lock (unigen/training/lock.py): a second training on it stops
    at once, naming the first."""
    workdir = os.path.abspath(workdir)
    check_output_folder(workdir, "--workdir")  # a file, under a file, not writable: refused before any work
    parallel.initialize()
    mesh = parallel.make_mesh({k: cfg.mesh[k] for k in parallel.MESH_AXES})
    rules = parallel.get_rules(cfg.mesh.rules)
    run = validate(cfg, num_devices=mesh.size)  # builds the task, which reads its frozen encoders
    resuming = ckpt_lib.is_workdir(workdir)
    with contextlib.ExitStack() as held:
        if resuming:
            _check_same_run(workdir, cfg)
            held.enter_context(lock_lib.acquire(workdir))  # before anything reads checkpoints being written
        tx, schedule = make_optimizer(cfg.train)
        graphdef, abstract, abstract_frozen, _ = ckpt_lib.abstract_train_state(cfg, run)
        # the PRNG key is replicated on purpose: every device draws the same timesteps/noise stream.
        shardings = parallel.train_state_shardings(abstract, mesh, rules,
                                                   regex_rules=((r"^rng$", jax.sharding.PartitionSpec()),))
        frozen_shardings = parallel.tree_shardings(abstract_frozen, mesh, rules)
        shard, shards = parallel.loader_shard_info(mesh, rules)
        local_batch = parallel.local_batch_size(cfg.train.batch_size, mesh, rules)
        data_iter = iter(run.task.dataset("train", batch_size=local_batch, seed=cfg.seed, shard=shard, shards=shards))

        def fresh_state():  # reads init_from and the task's pretrained parts (Task.fill_model)
            return initial_state(cfg, run, tx, shardings, frozen_shardings)

        fresh = None
        if not resuming:
            fresh = fresh_state()
            held.enter_context(lock_lib.acquire(workdir))  # the first write: creates the work dir
            if ckpt_lib.is_workdir(workdir):  # another run started it while this one was reading
                _check_same_run(workdir, cfg)
            elif jax.process_index() == 0:
                config_json = to_json(cfg)
                with disk.writing(os.path.join(workdir, ckpt_lib.CONFIG_NAME), len(config_json)):
                    ckpt_lib.save_config(workdir, config_json)
        ckpt = ckpt_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                                     asynchronous=cfg.train.get("async_checkpointing", True))
        try:
            restored = ckpt.restore_latest(_abstract_with(abstract, shardings))
            if restored is None:
                _say_when_retraining(workdir)
                start, (state, frozen) = 0, fresh or fresh_state()
                with disk.writing(os.path.join(workdir, ckpt_lib.FROZEN_DIR), _nbytes(frozen)):
                    ckpt_lib.save_frozen(workdir, frozen)
            else:
                start, state, data_state = restored
                frozen = ckpt_lib.frozen_parts(workdir, _abstract_with(abstract_frozen, frozen_shardings),
                                               lambda: fresh_state()[1], repair=True)
                data_iter.set_state(data_state)
        except BaseException:
            ckpt.close()
            raise
        del fresh
        if start >= cfg.train.steps:
            ckpt.close()
            return _finished_run(cfg, run.task, graphdef, state, frozen, workdir, start, mesh, rules)
        return _train_steps(cfg, run.task, workdir, ckpt, graphdef, tx, schedule, state, frozen, start, data_iter,
                            shardings, frozen_shardings, mesh, rules, progress)


def _train_steps(cfg, task, workdir, ckpt, graphdef, tx, schedule, state, frozen, start, data_iter,
                 shardings, frozen_shardings, mesh, rules, progress) -> dict:
    """Steps `start + 1 .. train.steps` with their logs, checkpoints, grids and the evaluation."""
    main_process = jax.process_index() == 0
    try:
        metrics_log = MetricsLog(workdir, resume_step=start) if main_process else None
    except BaseException:
        ckpt.close()
        raise

    train_step = make_train_step(graphdef, task, tx, schedule, grad_accum=cfg.train.grad_accum,
                                 ema_decay=cfg.train.ema_decay, custom_vjps=cfg.train.get("cpu_custom_vjps", True))

    def step_with_rules(state, frozen, batch):
        with parallel.use_rules(mesh, rules):  # activation constraints apply while tracing
            return train_step(state, frozen, batch)

    step_fn = None  # compiled at the first batch, whose entries fix the batch shardings
    generator = _generator(cfg, task, graphdef, mesh, rules)
    total, t = cfg.train.steps, cfg.train
    bar = _progress(start, total, progress and main_process)
    last_good, last_checked, all_finite, window = start, start, jnp.array(True), (time.perf_counter(), start)
    metrics = {}
    failure = None
    try:
        for step in range(start + 1, total + 1):
            batch = parallel.put_batch(next(data_iter), mesh, rules)
            if step_fn is None:
                batch_shardings = {k: v.sharding for k, v in batch.items()}
                step_fn = jax.jit(step_with_rules, in_shardings=(shardings, frozen_shardings, batch_shardings),
                                  out_shardings=(shardings, None), donate_argnums=0)
            state, metrics = step_fn(state, frozen, batch)
            all_finite = all_finite & metrics["finite"]
            last = step == total
            if step % t.log_every == 0 or last or step % t.checkpoint_every == 0:
                if not bool(all_finite):
                    raise TrainingDiverged(
                        f"loss became NaN/Inf between step {last_checked + 1} and {step}; stopped. "
                        f"The last good checkpoint (step {last_good}) in {ckpt.directory} is intact: "
                        f"lower config.train.lr or set config.train.grad_clip, then rerun to resume")
                last_checked, now = step, time.perf_counter()
                rate = (step - window[1]) / max(now - window[0], 1e-9)
                window = (now, step)
                row = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
                row.update(step=step, steps_per_s=rate, images_per_s=rate * t.batch_size)
                if main_process:
                    metrics_log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{rate:.1f}", img_s=f"{rate * t.batch_size:.0f}")
            if step % t.checkpoint_every == 0 or last:
                ckpt.save(step, state, data_iter.get_state())
                last_good = step
            if t.sample_every and generator is not None and (step % t.sample_every == 0 or last):
                path = os.path.join(workdir, f"samples_{step:07d}.png")
                with disk.writing(path):
                    grid = _sample_grid(cfg, task, generator, _model_states(state, frozen), path, main_process)
                if grid is not None:
                    metrics_log.image("samples", grid, step)
            bar.update(1)
    except BaseException as e:
        failure = e
        raise
    finally:
        closers = [bar.close, ckpt.close]
        if metrics_log is not None:
            closers += [lambda: metrics_log.plot(os.path.join(workdir, "loss.png")), metrics_log.close]
        _close_all(failure, closers)
    result = {"step": total, **{k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}}
    if cfg.eval.at_end:
        with disk.writing(workdir):
            result["eval"] = _evaluate(cfg, task, generator, graphdef, state, frozen, workdir, total)
    return result


def _close_all(failure, closers) -> None:
    """Run every closer. While the run already fails, a closer failing for lack of space (writing
    the loss plot on the full disk that stopped the run) is dropped: the run's own error says it
    once. Any other failure of a closer propagates (the first one)."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as e:
            if failure is not None and disk.is_disk_full(e):
                continue
            first = first or e
    if first is not None:
        raise first


def _nbytes(tree) -> int:
    return sum(int(leaf.size) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _say_when_retraining(workdir: str) -> None:
    """A work dir without checkpoints whose metrics log steps: trained before, its checkpoints
    deleted (or the run killed before its first one). Training starts again from step 0, which
    the user should know rather than find out from the metrics."""
    last = MetricsLog.last_logged_step(workdir)
    if last and jax.process_index() == 0:
        print(f"warning: {workdir}/checkpoints holds no checkpoint, but metrics.jsonl logs steps up to {last}: "
              f"training again from step 0 (its rows are replaced; keep a copy of the work dir to compare)",
              file=sys.stderr, flush=True)


def _generator(cfg, task, graphdef, mesh, rules):
    """The sampler of the task's generative model; None for a task without one (process None)."""
    if task.process is None:
        return None
    return task.generator(cfg.sample, graphdef, mesh=mesh, rules=rules)


def _evaluate(cfg, task, generator, graphdef, state, frozen, workdir, step):
    states = _model_states(state, frozen)
    generate = None if generator is None else _generate_fn(generator, states, cfg.eval.batch_size, task)
    if "model" in inspect.signature(task.evaluate).parameters:
        rows = task.evaluate(generate, workdir, model=nnx.merge(graphdef, *states))
    else:  # a task written before evaluate took the model
        rows = task.evaluate(generate, workdir)
    if rows and jax.process_index() == 0:
        log_eval(workdir, step, rows)
    return rows


def _finished_run(cfg, task, graphdef, state, frozen, workdir, step, mesh, rules):
    """A rerun of a run already at (or past) its last step: no training; the evaluation only when
    eval.json is missing or `eval.rerun` asks for it."""
    if step > cfg.train.steps:
        raise CheckpointError(f"{workdir} is at step {step}, past config.train.steps={cfg.train.steps}: "
                              f"raise train.steps to continue it, or use a new --workdir")
    print(f"{workdir} is already at its last step ({step}): nothing to train", flush=True)
    result = {"step": step, **MetricsLog.last_row(workdir, step)}
    eval_json = os.path.join(workdir, "eval.json")
    if cfg.eval.at_end and (cfg.eval.get("rerun", False) or not os.path.exists(eval_json)):
        generator = _generator(cfg, task, graphdef, mesh, rules)
        result["eval"] = _evaluate(cfg, task, generator, graphdef, state, frozen, workdir, step)
    elif cfg.eval.at_end:
        print(f"evaluation: {eval_json} (set --config.eval.rerun=True to evaluate again)", flush=True)
        with open(eval_json) as f:
            result["eval"] = json.load(f)
    return result


def _model_states(state, frozen):
    """What `nnx.merge(graphdef, ...)` takes to sample: the EMA weights, mutable and frozen parts."""
    return (state.ema, state.mutable, frozen["model"])


def _generate_fn(generator, states, batch_size, task):
    """`generate(cond, num, seed, label=None, **options) -> numpy images`, the form tasks evaluate
    with (a latent task's samples decoded to pixels); `options` go to the task's generator (e.g. a
    sampling mode of a multi-modal task)."""
    def generate(cond, num, seed, label=None, **options):
        samples = generator(states, cond, jax.random.PRNGKey(seed), num=num, batch_size=batch_size, progress=label,
                            **options)
        return task.decode_samples(samples)
    return generate


def _progress(start, total, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="train", disable=not enabled, dynamic_ncols=True)


def _sample_grid(cfg, task, generator, states, path, main_process):
    cond, num, rows = task.grid(cfg.sample.per_class)
    images = task.decode_samples(generator(states, cond, jax.random.PRNGKey(cfg.seed + 1), num=num, batch_size=num))
    labels = task.grid_labels(cfg.sample.per_class)
    return save_grid(path, images, rows=rows, labels=labels) if main_process else None
