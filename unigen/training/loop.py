"""The trainer: one loop for 1 CPU, 8 fake devices, many GPUs or many hosts.

    train(cfg, workdir)   # validate -> mesh -> state (fresh, init_from, or resumed) -> steps

The step is compiled once with explicit in/out shardings and the state donated. Batches
come from the grain pipeline, this process's share, placed with
`make_array_from_process_local_data`. Rerunning on an existing work dir resumes from its
latest checkpoint, with the data iterator where it was: the result is bitwise the same as
an uninterrupted run on the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen import parallel
from unigen.images import save_grid
from unigen.models.dit import DiT
from unigen.training import checkpoint as ckpt_lib
from unigen.training.build import validate
from unigen.training.config import to_json
from unigen.training.metrics import MetricsLog
from unigen.training.state import create_train_state, make_optimizer
from unigen.training.step import make_train_step

# Fields a resumed run may change; anything else must match the run that wrote the work dir.
# Optimizer hyperparameters may change (to recover from a divergence); the state's structure does not.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
                    "train.keep_checkpoints", "train.lr", "train.grad_clip", "train.warmup_steps",
                    "train.lr_schedule", "train.weight_decay", "train.b1", "train.b2", "train.ema_decay", "sample", "eval", "mesh", "data.data_dir", "model.scan_layers",
                    "model.remat", "model.attention_backend")


class TrainingDiverged(RuntimeError):
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
        if any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS):
            continue
        if old.get(key) != new.get(key):
            raise ckpt_lib.CheckpointError(
                f"{workdir} was trained with config.{key}={old.get(key)!r}, this run asks for "
                f"{new.get(key)!r}: use a new --workdir, or the same value to resume")


def _initial_state(cfg, model_cfg, tx, shardings):
    def init():
        if cfg.init_from:
            from unigen.pretrained import from_pretrained
            model = from_pretrained(cfg.init_from, scan_layers=model_cfg.scan_layers)
            if dataclasses.replace(model.cfg, dtype=model_cfg.dtype, attention_backend=model_cfg.attention_backend,
                                   remat=model_cfg.remat, class_dropout_prob=model_cfg.class_dropout_prob) != model_cfg:
                raise ValueError(f"config.init_from={cfg.init_from!r} holds a different architecture "
                                 f"({model.cfg}) than config.model ({model_cfg})")
        else:
            model = DiT(model_cfg, rngs=nnx.Rngs(params=cfg.seed))
        return create_train_state(model, tx, cfg.seed)[1]
    if cfg.init_from:  # weights read on the host, then placed
        return jax.device_put(init(), shardings)
    return jax.jit(init, out_shardings=shardings)()


def _abstract_with(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def train(cfg, workdir: str, *, progress: bool = True) -> dict:
    """Train (or resume) per `cfg` in `workdir`; returns the final metrics (and evaluation)."""
    from unigen.data.pipeline import make_dataset

    parallel.initialize()
    mesh = parallel.make_mesh({k: cfg.mesh[k] for k in parallel.MESH_AXES})
    rules = parallel.get_rules(cfg.mesh.rules)
    model_cfg, process = validate(cfg, num_devices=mesh.size)
    main_process = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if ckpt_lib.is_workdir(workdir):
        _check_same_run(workdir, cfg)
    elif main_process:
        ckpt_lib.save_config(workdir, to_json(cfg))

    tx, schedule = make_optimizer(cfg.train)
    graphdef, abstract, _ = ckpt_lib.abstract_train_state(cfg)
    # the PRNG key is replicated on purpose: every device draws the same timesteps/noise stream.
    shardings = parallel.train_state_shardings(abstract, mesh, rules, regex_rules=((r"^rng$", jax.sharding.PartitionSpec()),))
    ckpt = ckpt_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints)

    shard, shards = parallel.loader_shard_info(mesh, rules)
    local_batch = parallel.local_batch_size(cfg.train.batch_size, mesh, rules)
    dataset = make_dataset(cfg.data.name, "train", batch_size=local_batch, image_size=cfg.data.image_size,
                           seed=cfg.seed, process_index=shard, process_count=shards,
                           data_dir=cfg.data.data_dir or None)
    data_iter = iter(dataset)

    start = ckpt.latest_step()
    if start is None:
        start, state = 0, _initial_state(cfg, model_cfg, tx, shardings)
    else:
        state, data_state = ckpt.restore(start, _abstract_with(abstract, shardings))
        data_iter.set_state(data_state)
    metrics_log = MetricsLog(workdir, resume_step=start) if main_process else None

    train_step = make_train_step(graphdef, process, tx, schedule, grad_accum=cfg.train.grad_accum,
                                 ema_decay=cfg.train.ema_decay)

    def step_with_rules(state, batch):
        with parallel.use_rules(mesh, rules):  # activation constraints apply while tracing
            return train_step(state, batch)

    batch_shardings = {"image": parallel.batch_sharding(mesh, rules, 4), "label": parallel.batch_sharding(mesh, rules, 1)}
    step_fn = jax.jit(step_with_rules, in_shardings=(shardings, batch_shardings),
                      out_shardings=(shardings, None), donate_argnums=0)

    # Grids and the final evaluation sample on one process (the weights must be addressable there).
    single = main_process and jax.process_count() == 1
    generator = _generator(cfg, graphdef, state, process) if cfg.train.sample_every and single else None
    total, t = cfg.train.steps, cfg.train
    bar = _progress(start, total, progress and main_process)
    last_good, last_checked, all_finite, window = start, start, jnp.array(True), (time.perf_counter(), start)
    metrics = {}
    try:
        for step in range(start + 1, total + 1):
            batch = parallel.put_batch({k: v for k, v in next(data_iter).items() if k in ("image", "label")}, mesh, rules)
            state, metrics = step_fn(state, batch)
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
            if generator is not None and (step % t.sample_every == 0 or last):
                _sample_grid(cfg, generator, state, os.path.join(workdir, f"samples_{step:07d}.png"))
            bar.update(1)
    finally:
        bar.close()
        ckpt.close()
        if main_process and metrics_log is not None:
            metrics_log.plot(os.path.join(workdir, "loss.png"))
    result = {"step": total, **{k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}}
    if cfg.eval.at_end and single:
        result["eval"] = _final_evaluation(cfg, generator or _generator(cfg, graphdef, state, process), state, workdir)
    return result


def _progress(start, total, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="train", disable=not enabled, dynamic_ncols=True)


def _generator(cfg, graphdef, state, process):
    from unigen.sampling import Generator
    model = nnx.merge(graphdef, jax.device_get(state.ema))
    s = cfg.sample
    return Generator(model, process, sampler=s.sampler, steps=s.steps, cfg_scale=s.cfg_scale,
                     guided_channels=s.guided_channels, eta=s.eta, clip_denoised=s.get("clip_denoised", False))


def _sample_grid(cfg, generator, state, path):
    """One row per class (at most 16 classes, evenly spread, for 1000-class data sets)."""
    classes = np.unique(np.linspace(0, cfg.data.num_classes - 1, min(cfg.data.num_classes, 16)).astype(int))
    labels = np.repeat(classes, cfg.sample.per_class)
    images = generator(labels, jax.random.PRNGKey(cfg.seed + 1), params=state.ema, batch_size=len(labels))
    save_grid(path, images, rows=len(classes))


def _final_evaluation(cfg, generator, state, workdir):
    """The fixed protocol of unigen.eval: `eval.seeds` x `eval.num_samples` samples whose
    labels follow the test split's mix, scored against the test split, with yardsticks."""
    from unigen.infer.evaluate import report
    from unigen.infer.sample import protocol_samples

    images, labels, seeds = protocol_samples(generator, num_samples=cfg.eval.num_samples,
                                             seeds=range(cfg.eval.seeds), batch_size=cfg.eval.batch_size,
                                             params=state.ema)
    np.savez_compressed(os.path.join(workdir, "eval_samples.npz"), images=images, labels=labels, seed=seeds)
    rows, text = report(images, labels, seeds, title=os.path.join(workdir, "eval_samples.npz"))
    print(text)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows
