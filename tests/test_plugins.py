"""A model kind and a task (tests/plugin_vecnet.py), an objective and a sampler (tests/plugin_x0flow.py),
all defined outside unigen/ and named by the config's `imports`, train, checkpoint, resume and sample
through train/train.py and infer/sample.py; the task's own sample request becomes sample.py's flags."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "plugin_config.py")


def _run(*args, cwd=None, code=0):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd or ROOT)
    assert out.returncode == code, out.stderr[-3000:]
    return out


def _train(workdir, steps, *flags):
    return _run(os.path.join(ROOT, "train", "train.py"), "--config", CONFIG, "--workdir", str(workdir),
                "--no-progress", f"--config.train.steps={steps}", *flags)


def _sample(workdir, out, *flags, code=0):
    return _run(os.path.join(ROOT, "infer", "sample.py"), "--workdir", str(workdir), "--out", str(out), *flags,
                code=code)


def _resume_equals_whole_run(tmp_path, *flags):
    """Train 3 steps then resume to 6, and 6 in one go: one metrics row per step, the same state."""
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    _train(resumed, 3, *flags)
    _train(resumed, 6, *flags)  # resumes from step 3
    _train(whole, 6, *flags)
    with open(resumed / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 5, 6]
    (a, data_a), (b, data_b) = _state(resumed), _state(whole)
    assert int(a.step) == int(b.step) == 6 and data_a == data_b
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert os.path.exists(resumed / "samples_0000006.png")
    return resumed


def _state(workdir):
    from unigen.training import checkpoint as ck
    from unigen.training.build import import_plugins
    cfg = ck.read_config(str(workdir))
    import_plugins(cfg)
    _, abstract, _, _ = ck.abstract_train_state(cfg)
    c = ck.Checkpointer(str(workdir))
    try:
        return c.restore(c.latest_step(), abstract)
    finally:
        c.close()


def test_outside_kind_and_task_train_resume_and_sample(tmp_path):
    resumed = _resume_equals_whole_run(tmp_path)
    # infer/sample.py imports the plugin from the work dir's config, from any directory.
    out = tmp_path / "s" / "samples.npz"
    _run(os.path.join(ROOT, "infer", "sample.py"), "--workdir", str(resumed), "--per-class", "2", "--out", str(out),
         "--classes", "3,7", cwd=str(tmp_path))
    data = np.load(out)
    assert data["images"].shape == (4, 8, 8, 1) and list(data["labels"]) == [3, 3, 7, 7]
    assert os.path.exists(str(out)[:-4] + ".png")
    # ... and unigen.from_pretrained reads the work dir as the plugin's module.
    import unigen
    model = unigen.from_pretrained(str(resumed), scale=2.0)
    assert type(model).__name__ == "VecNet" and model.cfg.scale == 2.0


def test_outside_objective_sampler_and_sample_request(tmp_path):
    # config.diffusion.kind and config.sample.sampler name the objective and sampler plugin_x0flow.py registers.
    workdir = _resume_equals_whole_run(tmp_path, "--config.diffusion.kind=x0_flow", "--config.sample.sampler=midpoint")
    from unigen.training import checkpoint as ck
    assert ck.read_config(str(workdir)).diffusion.kind == "x0_flow"
    # The config's sampler, then unigen's own Euler on the outside objective (it offers FlowODE) ...
    grid = _sample(workdir, tmp_path / "mid.npz", "--per-class", "2", "--classes", "3,7")
    assert "grid, midpoint 3 steps" in grid.stdout
    euler = _sample(workdir, tmp_path / "euler.npz", "--sampler", "euler", "--steps", "4", "--classes", "5")
    assert "euler 4 steps" in euler.stdout
    # The sampler's own option (its registered schema) is a flag of the sampler in use, listed by --help.
    final = _sample(workdir, tmp_path / "final.npz", "--per-class", "2", "--classes", "3,7", "--final-euler", "true")
    assert "midpoint 3 steps" in final.stdout
    for name in ("mid", "euler", "final"):
        images = np.load(tmp_path / f"{name}.npz")["images"]
        assert np.isfinite(images).all() and images.std() > 0
    mid, final = np.load(tmp_path / "mid.npz")["images"], np.load(tmp_path / "final.npz")["images"]
    assert mid.shape == final.shape and not np.array_equal(mid, final)
    helped = _run(os.path.join(ROOT, "infer", "sample.py"), "--workdir", str(workdir), "--help").stdout
    assert "--final-euler" in helped and "--eta" not in helped  # DDIM's eta is not midpoint's
    assert "--eta" in _run(os.path.join(ROOT, "infer", "sample.py"), "--workdir", str(workdir), "--sampler", "ddim",
                           "--help").stdout
    wrong = _sample(workdir, tmp_path / "w.npz", "--final-euler", "maybe", code=2)
    assert "'maybe': give true or false" in wrong.stderr
    # ... but not a sampler whose needs it does not meet: one line naming what is missing and what fits.
    refused = _sample(workdir, tmp_path / "ddpm.npz", "--sampler", "ddpm", code=2)
    assert "needs ['GaussianDiffusion']" in refused.stderr and "'midpoint'" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # The task's own request: its flags are the work dir's options (listed by --help) and pick it.
    assert "--mix" in _run(os.path.join(ROOT, "infer", "sample.py"), "--workdir", str(workdir), "--help").stdout
    mix = _sample(workdir, tmp_path / "mix.npz", "--mix", "3,7", "--weight", "0.25", "--num", "3")
    data = np.load(tmp_path / "mix.npz")
    assert data["images"].shape == (3, 8, 8, 1) and "mix" in mix.stdout and os.path.exists(tmp_path / "mix.png")
    np.testing.assert_allclose(data["vec"][:, [3, 7]], [[0.25, 0.75]] * 3)
    bad = _sample(workdir, tmp_path / "bad.npz", "--mode", "grid", "--weight", "0.5", code=2)
    assert "--weight is an argument of --mode mix, not of --mode grid" in bad.stderr


def test_objective_and_sampler_fields_are_typed_by_their_schemas(tmp_path):
    # Each objective (sampler) reads its own fields of config.diffusion (config.sample); a field no registered
    # one declares is refused by name before anything is built, a bad value by the schema's own check.
    import plugin_x0flow  # noqa: F401
    import ml_collections

    from unigen.diffusion.registry import objective_options, sampler_options
    from unigen.errors import ConfigError
    mixed = ml_collections.ConfigDict(dict(kind="x0_flow", time_scale=10.0, num_timesteps=1000, shift=1.0))
    assert objective_options(mixed) == plugin_x0flow.X0FlowOptions(time_scale=10.0)  # the others' fields ignored
    mixed.time_scael = 3.0
    with pytest.raises(ConfigError, match=r"config.diffusion.time_scael: no registered objective reads this field; "
                                          r"did you mean 'time_scale'\?"):
        objective_options(mixed)
    with pytest.raises(ConfigError, match=r"config.diffusion.time_scale=-1.0: must be > 0"):
        objective_options(ml_collections.ConfigDict(dict(kind="x0_flow", time_scale=-1.0)))
    sample = dict(sampler="midpoint", steps=3, final_euler=True, eta=0.5)
    assert sampler_options(sample) == plugin_x0flow.MidpointOptions(final_euler=True)
    assert sampler_options(sample, "ddim").eta == 0.5
    with pytest.raises(ConfigError, match=r"config.sample.eta=-1: use a number >= 0"):
        sampler_options(dict(sampler="ddim", eta=-1))
    with pytest.raises(ConfigError, match=r"config.sample.final_eular: no registered sampler"):
        sampler_options(dict(sampler="midpoint", final_eular=True))
    # The trainer refuses a field misspelt in a config file in one line, before it writes the work dir.
    config = tmp_path / "misspelt.py"
    config.write_text("import importlib.util\n"
                      f"spec = importlib.util.spec_from_file_location('base', {CONFIG!r})\n"
                      "base = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(base)\n\n\n"
                      "def get_config():\n    c = base.get_config()\n    c.diffusion.time_scael = 3.0\n    return c\n")
    bad = _run(os.path.join(ROOT, "train", "train.py"), "--config", str(config), "--workdir", str(tmp_path / "w"),
               code=2)
    assert "config.diffusion.time_scael: no registered objective reads this field" in bad.stderr
    assert "Traceback" not in bad.stderr and not os.path.exists(tmp_path / "w" / "config.json")
    # A schema that is no dataclass, or takes a generator field, is refused when it registers.
    from unigen.diffusion import register_sampler

    @dataclasses.dataclass(frozen=True)
    class Clash:
        steps: int = 3
    with pytest.raises(ValueError, match=r"\['steps'\] are the generator's own config.sample fields"):
        register_sampler("clash", plugin_x0flow.midpoint, options=Clash)
    with pytest.raises(TypeError, match="options must be a dataclass"):
        register_sampler("clash", plugin_x0flow.midpoint, options=("steps",))


def test_registries_derive_which_samplers_fit_from_capabilities():
    # Registering a sampler from outside makes it a choice for every process that offers what it needs.
    import plugin_x0flow  # noqa: F401  (registers x0_flow and midpoint)

    from unigen.diffusion import GaussianDiffusion, RectifiedFlow, objective_names, samplers_for
    assert "x0_flow" in objective_names()
    assert samplers_for(RectifiedFlow.create()) == ["dpm_solver_2m", "euler", "heun", "midpoint"]
    assert samplers_for(GaussianDiffusion.create()) == ["ddim", "ddpm", "dpm_solver_2m"]
    assert samplers_for(plugin_x0flow.X0Flow()) == ["euler", "heun", "midpoint"]
    # The outside sampler on unigen's flow: the straight path z(sigma) = (1 - sigma) x0 + sigma e has the constant
    # velocity e - x0, so from z(1) = e the midpoint rule lands on x0.
    import jax
    import jax.numpy as jnp
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    flow = RectifiedFlow.create(time_scale=1.0)
    e = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
    out = plugin_x0flow.midpoint(flow, lambda z, t: e - x0, (4, 3), jax.random.PRNGKey(0), steps=3, noise=e)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-5)
