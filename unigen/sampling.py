"""One generator for any model kind, objective, conditions and data space.

    gen = Generator(graphdef, process, sample_shape=(8, 8, 1), sampler="dpm_solver_2m", steps=25,
                    cfg_scale=2.0, null_cond={"y": 10}, clip=True)
    images = gen(states, {"y": labels}, rng)          # numpy (N, H, W, C)
    gen = Generator.for_model(model, process, ...)    # the same, from a module

Sample i is drawn from `fold_in(rng, i)` alone, so it does not depend on the batch size, the
number of devices or processes: `infer/sample.py --protocol` reproduces the trainer's evaluation.
`states` are what `nnx.merge(graphdef, *states)` takes (e.g. the EMA parameters and the
frozen parts): an explicit argument of one compiled sampling loop, so sampling the weights of
every checkpoint reuses it and no weights are baked into a compiled closure. With a `mesh`,
the batch is split over the mesh's batch axes, the states keep their own shardings, and the
samples are gathered to every process: grids and evaluation run in multi-device and
multi-process runs too. `clip=True` clips to [-1, 1] (pixels); latents are left alone.

`prepare(model, cond, keys) -> cond` (a task's `prepare_conditions`) computes the model's
conditions from the given ones once per batch, inside the compiled function and before the
sampling loop, with the sample's own keys: e.g. an LZN draws each sample's latent z from
N(0, I), or from a class's zone, given only its label (unigen/tasks/lzn.py).
`apply(model, x, t, **cond) -> output` calls the network when it is not `model(x, t, **cond)`
itself, e.g. one of UniDiffuser's sampling modes over a multi-modal network
(unigen/unidiffuser/modes.py).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import unigen.parallel as parallel
from unigen.diffusion import check_objective, classifier_free_guidance
from unigen.config_sections import options_from
from unigen.diffusion.registry import check_sampler, sampler_options


class Generator:
    def __init__(self, graphdef, process, *, sample_shape, sampler: str = "dpm_solver_2m", steps: int = 25,
                 cfg_scale: float = 1.0, null_cond: dict | None = None, guided_channels: int | str | None = None,
                 guidance_interval: tuple[float, float] | None = None, sampler_options=None, clip: bool = True,
                 mesh=None, rules="dp", prepare=None, apply=None):
        check_objective(process)
        self.sampler_entry = check_sampler(sampler, process)  # ValueError: unknown, or needs what it lacks
        self.graphdef, self.sample_shape = graphdef, tuple(sample_shape)
        self.process = process.for_sampler(sampler, steps)
        self.sampler, self.steps = sampler, int(steps)
        # The sampler's own settings (its registered options schema, e.g. DDIM's eta, clip_denoised):
        # a dict of its fields or an instance of the schema.
        schema = self.sampler_entry.options
        if not isinstance(sampler_options, schema):  # a dict, or another sampler's options: checked by name
            given = (dataclasses.asdict(sampler_options) if dataclasses.is_dataclass(sampler_options)
                     else dict(sampler_options or {}))
            sampler_options = options_from(schema, _own_fields(schema, given, sampler), "sampler_options")
        self.sampler_options = sampler_options
        self.clip = bool(clip)  # the final samples to [-1, 1] (pixel data)
        self.mesh, self.rules = mesh, parallel.get_rules(rules)
        self.prepare = prepare

        def model_fn(x, t, states, **cond):
            module = nnx.merge(graphdef, *states)
            return module(x, t, **cond) if apply is None else apply(module, x, t, **cond)

        self.model_fn = model_fn
        if cfg_scale != 1.0:
            null_cond = dict(null_cond or {})
            if not null_cond or any(v is None for v in null_cond.values()):
                raise ValueError(f"cfg_scale={cfg_scale} needs a null condition for every condition, got "
                                 f"{null_cond}: train the model with condition dropout")
            if guided_channels is None or guided_channels == -1:
                guided_channels = process.prediction_channels(self.sample_shape[-1])
            self.model_fn = classifier_free_guidance(model_fn, float(cfg_scale), null_cond=null_cond,
                                                     shared=("states",), channels=guided_channels,
                                                     interval=guidance_interval)
        self._compiled = {}
        self.states = None

    @classmethod
    def for_model(cls, model: nnx.Module, process, **kwargs) -> "Generator":
        """A generator whose default states are `model`'s own variables."""
        graphdef, state = nnx.split(model)
        gen = cls(graphdef, process, **kwargs)
        gen.states = (state,)
        return gen

    @classmethod
    def from_config(cls, sample_cfg, task, graphdef, **kwargs) -> "Generator":
        """The generator `config.sample` describes for a task (its objective, sample shape, null
        condition and data space); `kwargs` override (e.g. mesh=, rules=, steps=).

        `sample.guidance_interval` (optional, (lo, hi) with lo <= hi): guide only where the time the
        model receives lies in [lo, hi] (classifier_free_guidance's `interval`), in model-time units:
        for a flow, model_time(sigma) = time_scale * sigma, or time_scale * (1 - sigma) with
        time_convention="data_at_one"; `RectifiedFlow.model_time_interval(sigma_lo, sigma_hi)`
        converts. LightningDiT's `cfg_interval_start` c (guidance where its t >= c, t = 1 data) is
        (c, 1.0) with time_convention="data_at_one", time_scale=1, or (0, 1000 (1 - c)) in the
        default SD3 convention."""
        s = sample_cfg
        options = dict(sampler=s.sampler, steps=s.steps, cfg_scale=s.cfg_scale, guided_channels=s.guided_channels,
                       guidance_interval=_guidance_interval(s.get("guidance_interval")))
        options.update(kwargs)
        # The chosen sampler's own fields of config.sample (its schema; a field no sampler reads is refused).
        options.setdefault("sampler_options", sampler_options(s, options["sampler"]))
        null_cond = task.null_cond() if options["cfg_scale"] != 1.0 else None
        options.setdefault("prepare", task.prepare_conditions)
        return cls(graphdef, task.process, sample_shape=task.sample_shape, null_cond=null_cond, clip=task.clip,
                   **options)

    def _sample_fn(self, batch: int):
        if batch in self._compiled:
            return self._compiled[batch]
        # The sampler's own options, and `steps` when it takes them (a sampler whose process was
        # respaced for it, DDPM or DDIM, takes none: unigen.diffusion.registry).
        options = dataclasses.asdict(self.sampler_options)
        if self.sampler_entry.takes_steps:
            options["steps"] = self.steps
        run, shape = self.sampler_entry.run, (batch, *self.sample_shape)

        def sample(states, cond, rng, index):
            # One key per sample, fold_in(rng, its index): a sample depends on (rng, index) only,
            # not on the batch size or the devices it is computed on.
            keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)
            rules = parallel.use_rules(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()
            with rules:
                if self.prepare is not None:
                    cond = self.prepare(nnx.merge(self.graphdef, *states), cond, keys)
                return run(self.process, self.model_fn, shape, keys, cond=dict(states=states, **cond), **options)

        if self.mesh is None:
            fn = jax.jit(sample)
        else:
            out = parallel.batch_sharding(self.mesh, self.rules, len(shape))
            fn = jax.jit(sample, out_shardings=out)
        self._compiled[batch] = fn
        return fn

    def _place(self, value: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(value)
        sharding = parallel.batch_sharding(self.mesh, self.rules, value.ndim)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    def _gather(self, x) -> np.ndarray:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    def __call__(self, states=None, cond: dict | None = None, rng=None, *, num: int | None = None,
                 batch_size: int = 500, progress: str | bool = False) -> np.ndarray:
        """`num` samples (default: the conditions' length), `batch_size` at a time; numpy
        (N, *sample_shape), clipped to [-1, 1] when `clip`. `progress`: a label for a bar."""
        states = self.states if states is None else states
        if states is None:
            raise ValueError("pass the model states (e.g. (ema_params, frozen)) or build with Generator.for_model")
        if rng is None:
            raise ValueError("pass a PRNG key: rng=jax.random.PRNGKey(seed)")
        cond = {k: np.asarray(v) for k, v in (cond or {}).items()}
        lengths = {len(v) for v in cond.values()}
        if len(lengths) > 1:
            raise ValueError(f"conditions of different lengths: { {k: len(v) for k, v in cond.items()} }")
        n = num if num is not None else (lengths.pop() if lengths else None)
        if n is None or n < 1 or (cond and n != len(next(iter(cond.values())))):
            raise ValueError(f"num={num} must be >= 1 and equal the conditions' length")
        batch = min(batch_size, n)
        if self.mesh is not None:  # every batch splits evenly over the batch devices
            ways = parallel.batch_ways(self.mesh, self.rules)
            batch = -(-batch // ways) * ways
        fn, out = self._sample_fn(batch), []
        bar = _bar(progress, n)
        for start in range(0, n, batch):
            part = {k: v[start:start + batch] for k, v in cond.items()}
            m = min(batch, n - start)
            if m < batch:  # keep one compiled shape: pad with copies of the first row
                part = {k: np.concatenate([v, np.repeat(v[:1], batch - m, axis=0)]) for k, v in part.items()}
            index = np.arange(start, start + batch, dtype=np.int32)
            x = fn(states, {k: self._place(v) for k, v in part.items()}, rng, self._place(index))
            out.append(self._gather(x)[:m])
            if bar is not None:
                bar.update(m)
        if bar is not None:
            bar.close()
        images = np.concatenate(out)
        return np.clip(images, -1.0, 1.0) if self.clip else images


def _own_fields(schema, given: dict, sampler: str) -> dict:
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(schema)})
    if unknown:
        raise ValueError(f"sampler_options {unknown}: sampler {sampler!r} takes "
                         f"{[f.name for f in dataclasses.fields(schema)] or 'no options'}")
    return dict(given)


def _guidance_interval(value):
    """`config.sample.guidance_interval` as a (lo, hi) float pair, or None."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
        ok = lo <= hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"config.sample.guidance_interval={value!r}: use (lo, hi) with lo <= hi in the units the "
                         "model receives (e.g. (0.11, 1.0) for LightningDiT's cfg_interval_start=0.11 with "
                         "time_convention='data_at_one', time_scale=1), or None to guide every step")
    return (lo, hi)


def _bar(progress, total):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=progress if isinstance(progress, str) else "sample", unit="img",
                dynamic_ncols=True, leave=False)
