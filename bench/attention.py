"""Attention kernels vs dense attention, timed in one run (docs/design.md §12: ratios, not
absolute numbers, and never assertions).

    python bench/attention.py            # CPU section; adds the GPU section on a GPU
    python bench/attention.py --quick    # fewer shapes / runs

CPU (XLA paths):
  * block-sparse "xla" block-gather at ~90% sparsity, 4096 tokens, 8 heads × 64,
    vs `jax.nn.dot_product_attention(implementation="xla")` and unigen's "einsum" backend
    (target ≥ 5×);
  * linear attention (bidirectional and block-causal) at 16384 tokens vs the same dense
    references (target ≥ 20×). Dense attention at 16k tokens would materialise an 8 GiB
    logits tensor, so the dense references run one head at a time (`lax.map`): the same
    FLOPs, bounded memory.
GPU (bf16, 16 heads, d 64/128, 4k–32k tokens, sparsity 0–95%): Pallas and Triton
block-sparse kernels vs `jax.nn.dot_product_attention(implementation="cudnn")`, with
TFLOP/s on the blocks each computes; linear attention as a fraction of the card's memory
bandwidth.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unigen.kernels import block_layout, block_sparse_attention, linear_attention
from unigen.nn.attention import attention


def timeit(fn, *args, runs: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of a jitted `fn(*args)`: compiled ahead of time (never timed),
    then `warmup` untimed calls, then `runs` timed calls, each synchronised with
    block_until_ready."""
    fn = fn.lower(*args).compile()
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timeit_interleaved(fns: dict, *args, runs: int = 5) -> dict:
    """Median seconds per jitted fn, timing the fns round-robin (one call each per round)
    so that load that comes and goes on a shared machine hits all of them alike."""
    compiled = {name: fn.lower(*args).compile() for name, fn in fns.items()}
    for fn in compiled.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def random_block_map(rng, heads, nq, nk, density):
    """Every query block keeps exactly round(density·nk) key blocks (diagonal included),
    as a top-k selection would; returns the map and its true sparsity."""
    keep = max(1, round(density * nk))
    scores = rng.random((1, heads, nq, nk))
    rows = np.arange(nq)
    scores[:, :, rows, np.minimum(rows, nk - 1)] = 2.0  # the diagonal always wins
    top = np.argpartition(-scores, keep - 1, axis=-1)[..., :keep]
    bmap = np.zeros(scores.shape, bool)
    np.put_along_axis(bmap, top, True, axis=-1)
    return bmap, 1.0 - bmap.mean()


def inputs(rng, t, heads, dim, dtype):
    return tuple(jnp.asarray(rng.normal(size=(1, t, heads, dim)), dtype) for _ in range(3))


def per_head(fn):
    """Run an attention fn one head at a time (bounded memory for long dense references)."""
    def run(q, k, v):
        qs, ks, vs = (jnp.moveaxis(x, 2, 0)[:, :, :, None] for x in (q, k, v))
        out = jax.lax.map(lambda a: fn(*a), (qs, ks, vs))
        return jnp.moveaxis(out[:, :, :, 0], 0, 2)
    return run


def dense_refs(heads_at_once: bool):
    xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    einsum = lambda q, k, v: attention(q, k, v, backend="einsum")
    if not heads_at_once:
        xla, einsum = per_head(xla), per_head(einsum)
    return {"dense xla (dot_product_attention)": jax.jit(xla), "dense einsum (unigen)": jax.jit(einsum)}


def row(name, seconds, refs):
    ratios = "  ".join(f"{r / seconds:7.2f}x vs {label.split(' (')[0]}" for label, r in refs.items())
    print(f"  {name:44s} {seconds * 1e3:10.1f} ms  {ratios}")


def cpu_section(runs: int, quick: bool):
    rng = np.random.default_rng(0)
    print(f"\n== CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} ({jax.default_backend()}) ==")

    t, heads, dim, block = 4096, 8, 64, 64
    q, k, v = inputs(rng, t, heads, dim, jnp.float32)
    nb = t // block
    bmap, sparsity = random_block_map(rng, heads, nb, nb, 0.10)
    layout = block_layout(bmap, t, t, block)
    print(f"\nblock-sparse attention: B=1, T={t}, H={heads}, Dh={dim}, block {block}, "
          f"sparsity {sparsity:.1%} ({layout.max_kv_blocks}/{nb} key blocks per query block), f32")
    sparse = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, layout, impl="xla"))
    timed = timeit_interleaved({**dense_refs(True), "sparse": sparse}, q, k, v, runs=runs)
    sparse_s = timed.pop("sparse")
    refs = timed
    for name, sec in refs.items():
        print(f"  {name:44s} {sec * 1e3:10.1f} ms")
    row("block-sparse xla (block gather)", sparse_s, refs)
    full_layout = block_layout(np.ones((1, 1, nb, nb), bool), t, t, block)
    full = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, full_layout, impl="xla"))
    row("block-sparse xla, full mask (overhead check)", timeit(full, q, k, v, runs=1, warmup=0), refs)

    t = 4096 if quick else 16384
    q, k, v = inputs(rng, t, heads, dim, jnp.float32)
    print(f"\nlinear attention: B=1, T={t}, H={heads}, Dh={dim}, f32 (dense refs one head at a time)")
    # One timed run each (no warm-up run beyond AOT compilation): a dense 16k call is
    # seconds long on 2 cores, so a single run is a stable figure and keeps the bench short.
    dense_runs, dense_warmup = (1, 0) if not quick else (runs, 1)
    refs = {name: timeit(fn, q, k, v, runs=dense_runs, warmup=dense_warmup)
            for name, fn in dense_refs(False).items()}
    for name, sec in refs.items():
        print(f"  {name:44s} {sec * 1e3:10.1f} ms")
    lin = jax.jit(lambda q, k, v: linear_attention(q, k, v, impl="xla"))
    causal = jax.jit(lambda q, k, v: linear_attention(q, k, v, chunk_size=256, impl="xla"))
    timed = timeit_interleaved({"lin": lin, "causal": causal}, q, k, v, runs=runs)
    row("linear xla, bidirectional (SANA)", timed["lin"], refs)
    row("linear xla, block-causal chunk 256 (SANA-Video)", timed["causal"], refs)


# Peak HBM bandwidth in bytes/s by `device_kind` substring (vendor data sheets).
_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12,
              "L40S": 0.864e12, "A10": 0.6e12, "RTX 4090": 1.0e12}


def peak_bandwidth(kind: str) -> float | None:
    for key, bw in _BANDWIDTH.items():
        if key in kind:
            return bw
    return None


def gpu_section(runs: int, quick: bool, lengths=None, sparsities=None):
    dev = jax.devices()[0]
    print(f"\n== GPU: {dev.device_kind}, jax {jax.__version__} ==")
    try:
        import jax_triton  # noqa: F401
        impls = ["pallas", "triton"]
    except ImportError:
        print("  (jax-triton not installed: Triton rows skipped)")
        impls = ["pallas"]
    rng = np.random.default_rng(0)
    heads, block, dtype = 16, 128, jnp.bfloat16
    lengths = lengths or ([4096, 16384] if quick else [4096, 8192, 16384, 32768])
    sparsities = sparsities or ([0.0, 0.9] if quick else [0.0, 0.5, 0.75, 0.9, 0.95])
    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    for dim in (64, 128):
        for t in lengths:
            q, k, v = inputs(rng, t, heads, dim, dtype)
            dense_s = timeit(cudnn, q, k, v, runs=runs)
            dense_tflops = 4 * t * t * dim * heads / dense_s / 1e12
            print(f"\nT={t}, H={heads}, Dh={dim}, bf16, block {block}: cuDNN dense "
                  f"{dense_s * 1e3:.2f} ms ({dense_tflops:.0f} TFLOP/s)")
            nb = t // block
            for target in sparsities:
                bmap, sparsity = random_block_map(rng, heads, nb, nb, 1.0 - target)
                layout = block_layout(bmap, t, t, block)
                flops = 4 * block * block * dim * int(bmap.sum())
                for impl in impls:
                    fn = jax.jit(lambda q, k, v, impl=impl: block_sparse_attention(
                        q, k, v, layout, impl=impl))
                    try:
                        sec = timeit(fn, q, k, v, runs=runs)
                    except Exception as err:  # report and go on: one failing shape is data
                        print(f"  {impl:7s} sparsity {sparsity:5.1%}: FAILED {type(err).__name__}: {err}")
                        continue
                    print(f"  {impl:7s} sparsity {sparsity:5.1%}: {sec * 1e3:8.2f} ms  "
                          f"{dense_s / sec:6.2f}x vs cuDNN  {flops / sec / 1e12:6.0f} TFLOP/s on "
                          f"computed blocks ({flops / sec / 1e12 / dense_tflops:.0%} of cuDNN's)")
    bw = peak_bandwidth(dev.device_kind)
    print(f"\nlinear attention, H={heads}, bf16 (peak bandwidth "
          f"{bw / 1e12 if bw else float('nan'):.2f} TB/s assumed for {dev.device_kind})")
    for dim in (64, 128):
        for t in lengths:
            q, k, v = inputs(rng, t, heads, dim, dtype)
            moved = 4 * q.size * q.dtype.itemsize  # read q, k, v; write o
            for impl in ["xla"] + impls:
                for chunk in (None, 256):
                    fn = jax.jit(lambda q, k, v, impl=impl, chunk=chunk: linear_attention(
                        q, k, v, chunk_size=chunk, impl=impl))
                    try:
                        sec = timeit(fn, q, k, v, runs=runs)
                    except Exception as err:
                        print(f"  {impl} T={t} d={dim}: FAILED {type(err).__name__}: {err}")
                        continue
                    frac = f"{moved / sec / bw:.0%} of peak" if bw else "peak unknown"
                    print(f"  {impl:7s} T={t:6d} d={dim:3d} chunk={str(chunk):4s} {sec * 1e3:8.3f} ms "
                          f"{moved / sec / 1e12:6.2f} TB/s ({frac})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and runs")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--section", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--lengths", type=int, nargs="*", help="GPU: sequence lengths")
    parser.add_argument("--sparsities", type=float, nargs="*", help="GPU: target block sparsities")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    on_gpu = jax.default_backend() == "gpu"
    if args.section in ("auto", "cpu") and not (args.section == "auto" and on_gpu):
        cpu_section(runs, args.quick)
    if args.section == "gpu" or (args.section == "auto" and on_gpu):
        if not on_gpu:
            raise SystemExit("--section gpu needs a GPU (jax backend is %r)" % jax.default_backend())
        gpu_section(runs, args.quick, args.lengths, args.sparsities)


if __name__ == "__main__":
    main()
