"""Subprocess side of tests/test_parallel.py and tests/test_multiprocess.py.

Fake CPU devices must be requested before jax is imported, so each check runs as
`python tests/parallel_checks.py MODE ...` in a fresh interpreter with XLA_FLAGS set by
the caller, and prints one JSON line ("RESULT {...}") that the test reads.

The model is a tiny DiT (2 layers, 4 heads, width 32) with its blocks stacked by
nnx.scan (`scan_layers=True`), so params carry a leading `layers` axis; training is
AdamW + EMA on an MSE to a fixed target, with noise drawn from the state's rng key.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import numpy as np

GLOBAL_BATCH = 8
STEPS = 3


def model_config(scan_layers=True):
    from unigen.models.dit import dit_config

    return dit_config("DiT-S/2", input_size=8, in_channels=4, hidden_size=32, depth=2,
                      num_heads=4, num_classes=10, scan_layers=scan_layers)


def init_state(cfg, tx):
    """The trainer's layout: graphdef + {params, opt_state, ema, step, rng}."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from unigen.models.dit import DiT

    graphdef, params = nnx.split(DiT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "ema": jax.tree.map(jnp.copy, params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key(1),
    }
    return graphdef, state


def optimizer():
    import optax

    return optax.adamw(1e-2, weight_decay=0.1)


def make_batch(step: int, cfg) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    n, s, c = GLOBAL_BATCH, cfg.input_size, cfg.in_channels
    return {
        "x": rng.standard_normal((n, s, s, c)).astype(np.float32),
        "t": rng.integers(0, 1000, (n,)).astype(np.int32),
        "y": rng.integers(0, cfg.num_classes, (n,)).astype(np.int32),
        "target": rng.standard_normal((n, s, s, cfg.out_channels)).astype(np.float32),
    }


def make_train_step(graphdef, tx, mesh=None, rules=None):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from unigen.parallel import use_rules

    def step(state, batch):
        with use_rules(mesh, rules) if mesh is not None else nullcontext():
            rng, key = jax.random.split(state["rng"])

            def loss_fn(params):
                model = nnx.merge(graphdef, params)
                noise = jax.random.normal(key, batch["x"].shape)
                out = model(batch["x"] + 0.1 * noise, batch["t"], batch["y"])
                return jnp.mean(jnp.square(out - batch["target"]))

            loss, grads = jax.value_and_grad(loss_fn)(state["params"])
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state["ema"], params)
        new = {"params": params, "opt_state": opt_state, "ema": ema,
               "step": state["step"] + 1, "rng": rng}
        return new, loss

    return step


def flat(tree) -> dict[str, np.ndarray]:
    """{path: host array} of every array leaf (keys as raw data)."""
    import jax
    from unigen.parallel.state import path_str

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[path_str(path)] = np.asarray(leaf)
    return out


def specs(tree) -> dict[str, list]:
    """{path: spec entries without trailing Nones} of every array leaf."""
    import jax
    from unigen.parallel.state import path_str

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = list(leaf.sharding.spec)
        while spec and spec[-1] is None:
            spec.pop()
        out[path_str(path)] = [list(s) if isinstance(s, tuple) else s for s in spec]
    return out


def train_reference(cfg):
    """Single-device run: no mesh, no rules."""
    import jax

    tx = optimizer()
    graphdef, state = init_state(cfg, tx)
    step = jax.jit(make_train_step(graphdef, tx), donate_argnums=0)
    losses = []
    for i in range(STEPS):
        state, loss = step(state, make_batch(i, cfg))
        losses.append(float(loss))
    return state, losses


def train_sharded(cfg, preset, mesh_shape, local_rows=None):
    """Sharded run with explicit in/out shardings and donation. `local_rows(batch)`
    picks this process's rows (multi-process); default: the whole batch."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from unigen import parallel as par

    tx = optimizer()
    mesh = par.make_mesh(mesh_shape)
    rules = par.get_rules(preset)
    graphdef, abstract = init_state_abstract(cfg, tx)
    state_sh, report = par.plan_shardings(abstract, mesh, rules, params=abstract["params"])
    # Born sharded (the trainer's pattern): the full state never sits on one device.
    state = jax.jit(lambda: init_state(cfg, tx)[1], out_shardings=state_sh)()
    batch0 = par.put_batch(_rows(make_batch(0, cfg), local_rows), mesh, rules)
    batch_sh = {k: v.sharding for k, v in batch0.items()}
    train_step = make_train_step(graphdef, tx, mesh, rules)
    compiled = jax.jit(
        train_step, in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, NamedSharding(mesh, P())), donate_argnums=0,
    ).lower(abstract, batch0).compile()
    losses = []
    for i in range(STEPS):
        batch = par.put_batch(_rows(make_batch(i, cfg), local_rows), mesh, rules)
        state, loss = compiled(state, batch)
        losses.append(float(loss))
    return state, losses, report, par.collective_stats(compiled.as_text()), mesh, state_sh


def init_state_abstract(cfg, tx):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from unigen.models.dit import DiT

    graphdef, params = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    abstract = {
        "params": params,
        "opt_state": jax.eval_shape(tx.init, params),
        "ema": params,
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.eval_shape(lambda: jax.random.key(1)),
    }
    return graphdef, abstract


def _rows(batch, local_rows):
    return batch if local_rows is None else {k: local_rows(v) for k, v in batch.items()}


def compare(a: dict, b: dict) -> dict:
    """Relative L2 differences: over the whole tree and the worst single leaf.

    Why L2 and not elementwise: AdamW divides by sqrt(v) + eps, so on leaves whose
    gradients are nearly zero (the zero-initialised adaLN and bias params of DiT) the
    float32 reduction-order noise of a different sharding is amplified to ~1e-4 of
    those leaves' tiny values, while the tree as a whole agrees to ~1e-7. A sharding
    bug (a wrong shard, a missing all-reduce) shows as an O(1) difference in both."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    num = den = 0.0
    worst, worst_key = 0.0, None
    int_mismatch = [k for k in a if not np.issubdtype(b[k].dtype, np.floating)
                    and not np.array_equal(a[k], b[k])]
    for k in a:
        if not np.issubdtype(b[k].dtype, np.floating):
            continue  # step counters, rng key data: compared exactly above
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        d, n = float(np.sum((x - y) ** 2)), float(np.sum(y ** 2))
        num, den = num + d, den + n
        rel = (d / max(n, 1e-30)) ** 0.5 if d else 0.0
        if rel > worst:
            worst, worst_key = rel, k
    return {"global": (num / max(den, 1e-30)) ** 0.5, "worst_leaf": worst,
            "worst_key": worst_key, "int_mismatch": int_mismatch}


def mode_train(runs_json: str, ckpt_dir: str = "") -> dict:
    """Train on each (preset, mesh shape) of `runs_json` and compare with one
    single-device reference run. The fsdp run is checkpointed to `ckpt_dir`."""
    cfg = model_config()
    ref_state, ref_losses = train_reference(cfg)
    ref_flat = flat(ref_state)
    results = {"ref_losses": ref_losses}
    for preset, mesh_shape in json.loads(runs_json):
        state, losses, report, stats, mesh, _ = train_sharded(cfg, preset, mesh_shape)
        results[preset] = {
            "losses": losses,
            "diff": compare(flat(state), ref_flat),
            "specs": specs(state),
            "unmatched": report.unmatched,
            "indivisible": report.indivisible,
            "collectives": {k: v for k, v in stats.items() if isinstance(v, dict)},
            "num_devices": len(mesh.devices.flat),
        }
        if ckpt_dir and preset == "fsdp":
            save_checkpoint(state, ckpt_dir)
        del state
    return results


def save_checkpoint(state, ckpt_dir):
    import jax
    import orbax.checkpoint as ocp

    to_save = dict(state, rng=jax.random.key_data(state["rng"]))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(f"{ckpt_dir}/state", to_save)
    np.savez(f"{ckpt_dir}/expected.npz", **flat(to_save))


def mode_restore(ckpt_dir: str, preset: str, mesh_json: str) -> dict:
    """Restore a checkpoint written on another mesh onto this one."""
    import jax
    import orbax.checkpoint as ocp
    from unigen import parallel as par

    cfg = model_config()
    mesh = par.make_mesh(json.loads(mesh_json))
    _, abstract = init_state_abstract(cfg, optimizer())
    abstract["rng"] = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(1)))
    shardings = par.train_state_shardings(abstract, mesh, preset)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(f"{ckpt_dir}/state", target)
    expected = dict(np.load(f"{ckpt_dir}/expected.npz"))
    got = flat(restored)
    exact = sorted(k for k in expected if np.array_equal(expected[k], got.get(k)))
    return {
        "num_devices": len(mesh.devices.flat),
        "all_equal": len(exact) == len(expected) == len(got),
        "mismatched": sorted(set(expected) - set(exact))[:5],
        "specs": specs(restored),
    }


def mode_multiprocess(port: str, process_id: str, preset: str, mesh_json: str, out_npz: str) -> dict:
    """One of two processes (4 CPU devices each) training on one 8-device mesh."""
    import jax
    from jax.experimental import multihost_utils
    from unigen import parallel as par

    par.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    cfg = model_config()
    mesh_shape = json.loads(mesh_json)
    index, count = par.loader_shard_info(par.make_mesh(mesh_shape), preset)
    rows = GLOBAL_BATCH // count
    state, losses, report, _, mesh, _ = train_sharded(
        cfg, preset, mesh_shape, local_rows=lambda a: a[index * rows:(index + 1) * rows])
    host = multihost_utils.process_allgather(
        {k: v for k, v in state.items() if k != "rng"}, tiled=True)
    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "shard": [index, count],
        "losses": losses,
        "specs": specs({"params": state["params"]}),
    }
    if jax.process_index() == 0:
        np.savez(out_npz, **flat(host))
    par.shutdown()
    return out


def mode_reference(out_npz: str) -> dict:
    cfg = model_config()
    state, losses = train_reference(cfg)
    np.savez(out_npz, **flat({k: v for k, v in state.items() if k != "rng"}))
    return {"losses": losses}


def mode_generate() -> dict:
    """The generator over a sharded mesh (fsdp=8: batch and weights split) against one device:
    the same samples (guided DPM-Solver++ on a learned-sigma Gaussian diffusion, 12 samples padded
    to a batch of 16)."""
    import jax
    from flax import nnx
    from unigen import parallel as par
    from unigen.diffusion import GaussianDiffusion
    from unigen.models.dit import DiT
    from unigen.sampling import Generator

    model = DiT(model_config(), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(3), a.shape), state)
    mesh, rules = par.make_mesh({"data": 1, "fsdp": 8, "tensor": 1, "context": 1}), par.get_rules("fsdp")
    kw = dict(sample_shape=(8, 8, 4), sampler="dpm_solver_2m", steps=4, cfg_scale=1.5, null_cond={"y": 10},
              clip=False)
    labels = {"y": np.arange(12, dtype=np.int32) % 10}
    diffusion = GaussianDiffusion.create(1000, "linear", learn_sigma=True)
    one = Generator(graphdef, diffusion, **kw)((state,), labels, jax.random.PRNGKey(0), batch_size=16)
    sharded_state = jax.device_put(state, par.tree_shardings(state, mesh, rules))
    many = Generator(graphdef, diffusion, mesh=mesh, rules=rules, **kw)(
        (sharded_state,), labels, jax.random.PRNGKey(0), batch_size=16)
    return {"shape": list(many.shape), "max_diff": float(np.abs(many - one).max()),
            "scale": float(np.abs(one).max()), "devices": len(jax.devices())}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    fn = {"train": mode_train, "restore": mode_restore, "reference": mode_reference,
          "multiprocess": mode_multiprocess, "generate": mode_generate}[mode]
    print("RESULT " + json.dumps(fn(*args)), flush=True)
