"""Memory and communication of one DiT-XL/2 train step under each sharding preset.

For 8, 64 and 256 devices (fake CPU devices, one subprocess per count since the count
is fixed when jax starts) this builds the real sharded AdamW train step of DiT-XL/2
(latent 32x32x4, 1000 classes, blocks scanned), compiles it with XLA and reports:

  params / opt MiB   per-device bytes of the parameters and of AdamW's two moments,
                     from the shard shapes of the planned shardings (exact, no run);
  args / temp MiB    XLA's memory analysis of the compiled step (per device);
  collectives        operand bytes per device per step of all-gather, reduce-scatter,
                     all-reduce, all-to-all and collective-permute, read from the
                     compiled HLO (`unigen.parallel.collective_stats`; loops multiplied
                     by their trip count).

Nothing is executed and no parameter is materialised (eval_shape). Numbers come from
XLA:CPU's SPMD partitioner: it lowers gradient reductions of sharded weights as
all-reduce + slice where the GPU pipeline would emit reduce-scatter, so on GPU the
"all-reduce" column of fsdp rows mostly turns into reduce-scatter of the same operand
size. With `--analytic-only` (or for counts whose compile fails / is skipped) the
collective columns are left empty and only the exact memory columns are given.

    python bench/scaling.py                 # 8, 64, 256 devices; writes bench/scaling_table.md (paste into RESULTS.md)
    python bench/scaling.py --devices 8     # just one count
    python bench/scaling.py --real          # on the real devices this process sees (e.g. one
                                            # GPU): compile AND run the dp step; XLA's memory
                                            # analysis next to the allocator's measured peak,
                                            # step time, images/s and TFLOP/s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 2 ** 20


def meshes(n: int) -> dict[str, dict[str, int]]:
    """The mesh each preset runs on with n devices. Tensor parallel stays inside an
    8-GPU NVLink node (2-way at 8 devices); context parallel is 4-way; the fsdp axis
    stops at 128 because embed = 1152 = 2^7 * 9 must split evenly, and the rest of the
    devices become data parallel (HSDP)."""
    tensor = 2 if n <= 8 else 8
    return {
        "dp": {"data": n},
        "fsdp": {"data": max(1, n // 128), "fsdp": min(n, 128)},
        "fsdp_tp": {"fsdp": n // tensor, "tensor": tensor},
        "cp": {"fsdp": n // 4, "context": 4},
    }


def batch_shardings(mesh, rules) -> dict:
    """Shardings of the train batch's four arrays (images NHWC, labels and times 1-D)."""
    from unigen import parallel as par

    return {k: par.batch_sharding(mesh, rules, nd) for k, nd in (("x", 4), ("t", 1), ("y", 1), ("target", 4))}


def make_train_step(graphdef, tx, mesh, rules):
    """The AdamW train step every row measures: MSE of the DiT output against a target."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from unigen import parallel as par

    def step(state, batch):
        with par.use_rules(mesh, rules):
            def loss_fn(p):
                out = nnx.merge(graphdef, p)(batch["x"], batch["t"], batch["y"])
                return jnp.mean(jnp.square(out.astype(jnp.float32) - batch["target"]))
            loss, grads = jax.value_and_grad(loss_fn)(state["params"])
            updates, opt = tx.update(grads, state["opt_state"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt,
                    "step": state["step"] + 1}, loss
    return step


def worker(n: int, per_device_batch: int, presets: list[str]) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from unigen import parallel as par
    from unigen.models.dit import DiT, dit_config

    assert jax.device_count() == n, (jax.device_count(), n)
    cfg = dit_config("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, scan_layers=True)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    tx = optax.adamw(1e-4, weight_decay=0.0)
    abstract = {"params": params, "opt_state": jax.eval_shape(tx.init, params),
                "step": jax.ShapeDtypeStruct((), jnp.int32)}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    rows = []
    for preset in presets:
        shape = meshes(n)[preset]
        mesh = par.make_mesh(shape)
        rules = par.get_rules(preset)
        state_sh, report = par.plan_shardings(abstract, mesh, rules)
        param_sh = state_sh["params"]
        row = {
            "devices": n, "preset": preset, "mesh": {k: v for k, v in shape.items() if v > 1},
            "params": n_params,
            "params_MiB": par.bytes_per_device(params, param_sh) / MiB,
            "opt_MiB": par.bytes_per_device(abstract["opt_state"], state_sh["opt_state"]) / MiB,
            "indivisible": len(report.indivisible), "unmatched": len(report.unmatched),
        }
        # The loader batch: per_device_batch examples per device that sees distinct data.
        batch_ways = int(np.prod([mesh.shape[a] for a in ("data", "fsdp", "context")]))
        gb = per_device_batch * batch_ways
        s, c = cfg.input_size, cfg.in_channels
        bsh = batch_shardings(mesh, rules)
        batch = {
            "x": jax.ShapeDtypeStruct((gb, s, s, c), jnp.float32, sharding=bsh["x"]),
            "t": jax.ShapeDtypeStruct((gb,), jnp.int32, sharding=bsh["t"]),
            "y": jax.ShapeDtypeStruct((gb,), jnp.int32, sharding=bsh["y"]),
            "target": jax.ShapeDtypeStruct((gb, s, s, cfg.out_channels), jnp.float32, sharding=bsh["target"]),
        }

        step = make_train_step(graphdef, tx, mesh, rules)

        t0 = time.time()
        compiled = jax.jit(step, in_shardings=(state_sh, bsh), out_shardings=(state_sh, NamedSharding(mesh, P())),
                           donate_argnums=0).lower(abstract, batch).compile()
        row["compile_s"] = time.time() - t0
        row["global_batch"] = gb
        mem = compiled.memory_analysis()
        if mem is not None:
            row["args_MiB"] = mem.argument_size_in_bytes / MiB
            row["temp_MiB"] = mem.temp_size_in_bytes / MiB
        row["collectives"] = par.collective_stats(compiled.as_text())
        rows.append(row)
        print(f"# {n} devices {preset}: compiled in {row['compile_s']:.0f}s", file=sys.stderr, flush=True)
    return rows


def real_run(model: str, per_device_batch: int, steps: int, compute_dtype: str) -> None:
    """The dp train step of `model` (DiT-XL/2 by default) compiled for, and run on, the devices this process sees
    (no fake devices): checks the memory columns against what the allocator really used."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from unigen import parallel as par
    from unigen.models.dit import DiT, dit_config

    sys.path.insert(0, str(HERE))
    from dit_speed import dit_flops

    n = jax.device_count()
    dev = jax.devices()[0]
    cfg = dit_config(model, input_size=32, in_channels=4, num_classes=1000, scan_layers=True,
                     dtype=compute_dtype)
    mesh = par.make_mesh({"data": n})
    rules = par.get_rules("dp")
    graphdef, params = nnx.split(DiT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tx = optax.adamw(1e-4, weight_decay=0.0)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    state_sh, _ = par.plan_shardings(jax.eval_shape(lambda: state), mesh, rules)
    state = jax.device_put(state, state_sh)
    gb = per_device_batch * n
    s, c = cfg.input_size, cfg.in_channels
    rng = np.random.default_rng(0)
    bsh = batch_shardings(mesh, rules)
    batch = {"x": rng.normal(size=(gb, s, s, c)).astype(np.float32),
             "t": rng.integers(0, 1000, gb).astype(np.int32),
             "y": rng.integers(0, 1000, gb).astype(np.int32),
             "target": rng.normal(size=(gb, s, s, cfg.out_channels)).astype(np.float32)}
    batch = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}

    step = make_train_step(graphdef, tx, mesh, rules)

    t0 = time.time()
    compiled = jax.jit(step, in_shardings=(state_sh, bsh), out_shardings=(state_sh, NamedSharding(mesh, P())),
                       donate_argnums=0).lower(state, batch).compile()
    compile_s = time.time() - t0
    mem = compiled.memory_analysis()
    for _ in range(2):  # warm-up
        state, loss = compiled(state, batch)
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, loss = compiled(state, batch)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    flops = 3 * dit_flops(cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size, s, c,
                          per_block_cond=False) * gb
    stats = dev.memory_stats() or {}
    print(f"\n== {model} dp train step on {n} x {dev.device_kind} (jax {jax.__version__}), "
          f"batch {gb}, {compute_dtype} compute, f32 params + AdamW, blocks scanned ==")
    print(f"compile {compile_s:.1f} s; step median {sec * 1e3:.1f} ms over {steps} "
          f"(min {min(times) * 1e3:.1f}); {gb / sec:.1f} images/s; "
          f"{flops / sec / 1e12:.0f} TFLOP/s (matmul FLOPs, 3x forward); loss {float(loss):.4f}")
    if mem is not None:
        print(f"XLA memory analysis per device: args {mem.argument_size_in_bytes / MiB:.1f} MiB, "
              f"temp {mem.temp_size_in_bytes / MiB:.1f} MiB, output {mem.output_size_in_bytes / MiB:.1f} MiB")
    if "peak_bytes_in_use" in stats:
        print(f"allocator peak in use: {stats['peak_bytes_in_use'] / MiB:.1f} MiB "
              f"(of {stats.get('bytes_limit', 0) / MiB:.0f} MiB)")


def table(rows: list[dict]) -> str:
    kinds = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
    short = {"all-gather": "AG", "reduce-scatter": "RS", "all-reduce": "AR", "all-to-all": "A2A",
             "collective-permute": "CP"}
    head = ("| devices | preset | mesh | batch | params MiB | AdamW MiB | args MiB | temp MiB | "
            + " | ".join(f"{short[k]} MiB (n)" for k in kinds) + " | total MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r.get("collectives")
        cells = [f"{c[k]['bytes'] / MiB:.1f} ({c[k]['count']})" if c else "–" for k in kinds]
        total = f"{c['total_bytes'] / MiB:.1f}" if c else "–"
        mesh = "×".join(f"{k}{v}" for k, v in r["mesh"].items()) or "1"
        lines.append(
            f"| {r['devices']} | {r['preset']} | {mesh} | {r.get('global_batch', '–')} | "
            f"{r['params_MiB']:.1f} | {r['opt_MiB']:.1f} | {r.get('args_MiB', float('nan')):.1f} | "
            f"{r.get('temp_MiB', float('nan')):.1f} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="*", default=[8, 64, 256])
    ap.add_argument("--presets", nargs="*", default=["dp", "fsdp", "fsdp_tp", "cp"])
    ap.add_argument("--per-device-batch", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per device count")
    ap.add_argument("--out", default=str(HERE / "scaling_table.md"))
    ap.add_argument("--real", action="store_true",
                    help="compile and run the dp step on the real devices (e.g. one GPU)")
    ap.add_argument("--model", default="DiT-XL/2", help="model name with --real")
    ap.add_argument("--steps", type=int, default=10, help="timed steps with --real")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype with --real")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.real:
        real_run(args.model, args.per_device_batch, args.steps, args.dtype)
        return

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.per_device_batch, args.presets)))
        return

    rows = []
    for n in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        cmd = [sys.executable, __file__, "--worker", str(n), "--per-device-batch",
               str(args.per_device_batch), "--presets", *args.presets]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            out = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not out:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise RuntimeError(f"worker for {n} devices failed")
            rows += json.loads(out[-1][len("RESULT "):])
        except (subprocess.TimeoutExpired, RuntimeError) as e:
            print(f"{n} devices: no compiled numbers ({e})", file=sys.stderr)
        print(f"{n} devices done in {time.time() - t0:.0f}s", file=sys.stderr)

    text = table(rows)
    print(text)
    import jax
    Path(args.out).write_text(
        "# DiT-XL/2 sharding: per-device memory and collective traffic per train step\n\n"
        f"Generated by `python bench/scaling.py` (jax {jax.__version__}, XLA:CPU with fake "
        f"devices, compile only; per-device batch {args.per_device_batch}). All numbers are "
        "per device. Memory columns params/AdamW are exact shard sizes; args/temp come from "
        "XLA's memory analysis of the compiled step; collective columns are operand bytes "
        "(and op counts) read from the compiled HLO, scan loops multiplied out. See the "
        "module docstring for caveats (XLA:CPU emits all-reduce where GPU emits "
        "reduce-scatter).\n\n" + text + "\n")


if __name__ == "__main__":
    main()
