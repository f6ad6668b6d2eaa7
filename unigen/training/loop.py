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

import dataclasses
import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

import unigen.parallel as parallel
from unigen.config_sections import may_change_on_resume, value_before
from unigen.errors import CheckpointError, ConfigError, UnigenError
from unigen.images import save_grid
from unigen.models import kind_of
from unigen.training import checkpoint as ckpt_lib
from unigen.training.build import validate
from unigen.training.config import to_json
from unigen.training.metrics import MetricsLog, log_eval
from unigen.training.state import create_train_state, make_optimizer
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


def _initial_state(cfg, run, tx, shardings, frozen_shardings):
    kind, patterns = run.model_kind, tuple(cfg.train.get("frozen", ()) or ())

    fill = run.task.fill_model  # a task may put pretrained parts into a fresh model (host-side)

    def init():
        model = _init_from(cfg, run) if cfg.init_from else kind.build(run.model_cfg, cfg.seed)
        if fill is not None and not cfg.init_from:
            model = fill(model)
        _, state, frozen_model = create_train_state(model, tx, cfg.seed, patterns)
        return state, frozen_model

    if cfg.init_from or fill is not None:  # weights read on the host, then placed
        state, frozen_model = jax.device_put(init(), (shardings, frozen_shardings["model"]))
    else:
        state, frozen_model = jax.jit(init, out_shardings=(shardings, frozen_shardings["model"]))()
    task_frozen = jax.device_put(run.task.frozen(cfg.seed), frozen_shardings["task"])
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


def _abstract_with(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def train(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Train (or resume) per `cfg` in `workdir`; returns the final metrics (and evaluation)."""
    parallel.initialize()
    mesh = parallel.make_mesh({k: cfg.mesh[k] for k in parallel.MESH_AXES})
    rules = parallel.get_rules(cfg.mesh.rules)
    run = validate(cfg, num_devices=mesh.size)
    task = run.task
    main_process = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file: give a folder (new or a unigen work dir)")
    if ckpt_lib.is_workdir(workdir):
        _check_same_run(workdir, cfg)
    elif main_process:
        ckpt_lib.save_config(workdir, to_json(cfg))

    tx, schedule = make_optimizer(cfg.train)
    graphdef, abstract, abstract_frozen, _ = ckpt_lib.abstract_train_state(cfg, run)
    # the PRNG key is replicated on purpose: every device draws the same timesteps/noise stream.
    shardings = parallel.train_state_shardings(abstract, mesh, rules, regex_rules=((r"^rng$", jax.sharding.PartitionSpec()),))
    frozen_shardings = parallel.tree_shardings(abstract_frozen, mesh, rules)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                                 asynchronous=cfg.train.get("async_checkpointing", True))

    shard, shards = parallel.loader_shard_info(mesh, rules)
    local_batch = parallel.local_batch_size(cfg.train.batch_size, mesh, rules)
    data_iter = iter(task.dataset("train", batch_size=local_batch, seed=cfg.seed, shard=shard, shards=shards))

    restored = ckpt.restore_latest(_abstract_with(abstract, shardings))
    if restored is None:
        start, (state, frozen) = 0, _initial_state(cfg, run, tx, shardings, frozen_shardings)
        ckpt_lib.save_frozen(workdir, frozen)
    else:
        start, state, data_state = restored
        frozen = ckpt_lib.restore_frozen(workdir, _abstract_with(abstract_frozen, frozen_shardings))
        data_iter.set_state(data_state)
    if start >= cfg.train.steps:
        ckpt.close()
        return _finished_run(cfg, task, graphdef, state, frozen, workdir, start, mesh, rules)
    metrics_log = MetricsLog(workdir, resume_step=start) if main_process else None

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
                grid = _sample_grid(cfg, task, generator, _model_states(state, frozen),
                                    os.path.join(workdir, f"samples_{step:07d}.png"), main_process)
                if grid is not None:
                    metrics_log.image("samples", grid, step)
            bar.update(1)
    finally:
        bar.close()
        ckpt.close()
        if main_process and metrics_log is not None:
            metrics_log.plot(os.path.join(workdir, "loss.png"))
            metrics_log.close()
    result = {"step": total, **{k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}}
    if cfg.eval.at_end:
        result["eval"] = _evaluate(cfg, task, generator, graphdef, state, frozen, workdir, total)
    return result


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
    with (a latent task's samples decoded to pixels); `options` go to the task's generator (e.g.
    UniDiffuser's mode=)."""
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
