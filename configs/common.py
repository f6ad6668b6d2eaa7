"""The defaults every run config in configs/ shares: its train, sample, eval and mesh sections.

Each function returns a fresh ConfigDict holding the house defaults below, with the keywords given
in place of them: a config states only what its experiment changes,

    c.train = common.train(steps=2000, lr=1e-3)

so a value written in a config is a choice and everything else is the default here. A keyword
that is not a field of the section is an error (a typo would otherwise add a field nothing reads);
a field only one experiment has is set on the returned section (`c.sample.guidance_interval =
...`). Values keep the defaults' types (`lr=1` becomes 1.0; a list given for a tuple becomes one).
`config(name)` reads another config of this folder (RAE takes its encoder's fields from the LZN's).

This is not a config: it has no get_config() and `--config` does not take it. Config files are
loaded by path, not imported as a package (ml_collections.config_flags,
unigen.training.config.load_config_file), so a config loads this file by path too, from its own
folder, whatever the working directory:

    _spec = importlib.util.spec_from_file_location(
        "configs_common", os.path.join(os.path.dirname(os.path.realpath(__file__)), "common.py"))
    common = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(common)
"""

import importlib.util
import os

import ml_collections


def config(name: str) -> ml_collections.ConfigDict:
    """get_config() of another config in this folder, e.g. `config("lzn_repr_digits.py")`: a config
    that builds on another run's model reads its fields from there, so the two cannot drift."""
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), name)
    spec = importlib.util.spec_from_file_location(f"configs_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _section(name: str, defaults: dict, overrides: dict) -> ml_collections.ConfigDict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"configs/common.py {name}(): no field {', '.join(unknown)} in the {name} section "
                        f"(its fields: {', '.join(sorted(defaults))}); set a field of your own on the "
                        f"section it returns")
    section = ml_collections.ConfigDict(defaults)
    try:
        section.update(overrides)  # type-safe: ints widen to floats, lists become tuples
    except TypeError as e:  # a value of another type (a str for a float, ...)
        raise TypeError(f"configs/common.py {name}(): {e}") from None
    return section


def train(*, steps: int, **overrides) -> ml_collections.ConfigDict:
    """The optimiser, schedule, EMA and checkpointing; `steps` is each experiment's own budget.

    Defaults: batches of 64 in one micro-batch; AdamW at 2e-3 with betas (0.9, 0.99), no weight
    decay, gradients clipped at norm 1, 200 warm-up steps then a cosine decay to a tenth; EMA
    0.999 of the weights; float32 compute; nothing frozen and every part at the one learning rate;
    the CPU-tuned backward kernels (a no-op on GPUs); checkpoints saved in the background every 500
    steps, 2 kept; metrics every 50 steps and sample grids every 1000 (0 = never).
    """
    return _section("train", dict(
        steps=steps, batch_size=64, grad_accum=1,
        lr=2e-3, warmup_steps=200, lr_schedule="cosine", weight_decay=0.0,
        b1=0.9, b2=0.99, grad_clip=1.0,
        ema_decay=0.999, compute_dtype="float32",
        frozen=(),                # regexes of parameter paths to keep frozen (not optimised / EMA'd)
        lr_multipliers=(),        # ((regex over parameter paths, factor), ...): per-part learning rates
        cpu_custom_vjps=True,     # CPU-tuned backward kernels in the train step (a no-op on GPUs)
        async_checkpointing=True,  # save in a background thread (training goes on meanwhile)
        log_every=50, checkpoint_every=500, keep_checkpoints=2, sample_every=1000,
    ), overrides)


def sample(**overrides) -> ml_collections.ConfigDict:
    """How sample grids, `infer/sample.py` and the evaluation draw samples.

    Defaults: DPM-Solver++(2M) with 15 steps, no classifier-free guidance (cfg_scale 1.0; when
    guided, on every channel the model predicts: guided_channels -1), deterministic (eta 0), x0
    not clipped (latents have no fixed range; pixel-space configs clip to [-1, 1]), grids of 10
    samples per class.
    """
    return _section("sample", dict(sampler="dpm_solver_2m", steps=15, cfg_scale=1.0, guided_channels=-1,
                                   eta=0.0, clip_denoised=False, per_class=10), overrides)


def eval(**overrides) -> ml_collections.ConfigDict:  # noqa: A001 (named after the config's `eval` section)
    """The evaluation at the end of training (unigen/eval's protocol).

    Defaults: the digits protocol, 3 seeds x 5000 samples drawn in batches of 1000, run when
    training ends; a rerun of a finished run evaluates again only if eval.json is missing.
    """
    return _section("eval", dict(at_end=True, num_samples=5000, seeds=3, batch_size=1000, rerun=False),
                    overrides)


def mesh(**overrides) -> ml_collections.ConfigDict:
    """The device mesh and its sharding rules (docs/multi_gpu.md).

    Defaults: data parallel over every device (data -1 fills the rest), no FSDP, tensor or context
    parallelism, the "dp" rule table.
    """
    return _section("mesh", dict(data=-1, fsdp=1, tensor=1, context=1, rules="dp"), overrides)
