"""The three products of every DiT-S/2 linear layer, XLA:CPU against torch (MKL), float32.

    python bench/dense_products.py                      # ~20 s on 2 cores
    python bench/dense_products.py --xla-flags=--xla_cpu_use_onednn=true

For each layer of a DiT-S/2 block at batch 32 (8192 tokens, width 384) it times the forward
product Y = X W, the input gradient dX = dY W^T and the weight gradient dW = X^T dY (the
contraction over all 8192 tokens), and prints GFLOP/s for each side and unigen/torch. The
sides run one after the other in two worker processes, so neither thread pool runs while the
other measures; medians of 15 calls after a warm-up.

Why it exists: these products are three quarters of unigen's train step on a CPU, and they
are where the train step loses to diffusers (bench/RESULTS.md, the `--ablate-attention`
section). Rerun it after upgrading jax to see whether XLA:CPU's dots moved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (name, tokens, fan_in, fan_out) of the DiT-S/2 block's Dense layers at batch 32.
LAYERS = [("qkv", 8192, 384, 1152), ("proj", 8192, 384, 384), ("fc1", 8192, 384, 1536),
          ("fc2", 8192, 1536, 384)]
PRODUCTS = ("forward", "dX", "dW")


def _products(side):
    """{layer: {product: seconds}} for one side, run in this (worker) process: the median of
    15 calls after an untimed one (dit_speed's timer)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from dit_speed import _time
    out = {}
    if side == "torch":
        import torch
        torch.set_num_threads(os.cpu_count())
        for name, n, k, m in LAYERS:
            x, w, dy = torch.randn(n, k), torch.randn(k, m), torch.randn(n, m)
            out[name] = {"forward": _time(lambda: x @ w, 15),
                         "dX": _time(lambda: dy @ w.T, 15),
                         "dW": _time(lambda: x.T @ dy, 15)}
        return out
    import jax
    from unigen.nn import dense_general
    # unigen's own Dense product and its custom VJP (unused outputs are dead code under jit,
    # so each function below runs one product).
    forward = jax.jit(dense_general)
    d_x = jax.jit(lambda x, w, dy: jax.vjp(lambda x: dense_general(x, w), x)[1](dy)[0])
    d_w = jax.jit(lambda x, w, dy: jax.vjp(lambda w: dense_general(x, w), w)[1](dy)[0])
    for i, (name, n, k, m) in enumerate(LAYERS):
        keys = jax.random.split(jax.random.key(i), 3)
        x, w, dy = (jax.random.normal(kk, s) for kk, s in zip(keys, [(n, k), (k, m), (n, m)]))
        out[name] = {"forward": _time(lambda: forward(x, w).block_until_ready(), 15),
                     "dX": _time(lambda: d_x(x, w, dy).block_until_ready(), 15),
                     "dW": _time(lambda: d_w(x, w, dy).block_until_ready(), 15)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xla-flags", default="", help="XLA_FLAGS for the jax worker")
    ap.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_products(args.worker)))
        return None
    results = {}
    for side in ("torch", "jax"):
        env = dict(os.environ, XLA_FLAGS=args.xla_flags) if side == "jax" else dict(os.environ)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", side],
                              env=env, capture_output=True, text=True, check=True)
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"# float32, {os.cpu_count()} threads each; XLA_FLAGS={args.xla_flags!r}")
    print(f"{'layer':6s} {'product':8s} {'shape (M x K x N)':20s} {'torch GF/s':>10s} {'jax GF/s':>9s} {'jax/torch':>9s}")
    for name, n, k, m in LAYERS:
        dims = {"forward": (n, k, m), "dX": (n, m, k), "dW": (k, n, m)}
        for product in PRODUCTS:
            flop = 2 * n * k * m
            rate = {side: flop / results[side][name][product] / 1e9 for side in results}
            shape = " x ".join(map(str, dims[product]))
            print(f"{name:6s} {product:8s} {shape:20s} {rate['torch']:10.0f} {rate['jax']:9.0f} "
                  f"{rate['jax'] / rate['torch']:8.2f}x")
    return results


if __name__ == "__main__":
    main()
