"""Correctness of the compiled GPU kernels (Pallas through Triton, and jax-triton) against
the dense reference, on a real GPU. The CPU test suite checks the same kernels in Pallas
interpret mode; this is the check that the code the GPU actually runs is right.

    python bench/gpu_kernel_check.py          # on a CUDA GPU; prints a table, exits 1 on a miss

For each case: fresh random inputs, output and the gradients of a random projection of the
output with respect to q, k and v, compared with `impl="reference"` (dense + mask, or the
quadratic linear-attention form) run in float32 at `precision="highest"` on inputs upcast
from the same values. Error is ||x - ref|| / ||ref|| per tensor. Bounds (device METHOD
notes): float32 inputs pass under 2e-3 (tensor-core dots run in tf32, ~3e-4), bfloat16
inputs under 2e-2; NaN never passes.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from unigen.kernels import block_sparse_attention, linear_attention

BOUND = {jnp.float32: 2e-3, jnp.bfloat16: 2e-2}


def rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(x)):
        return float("nan")
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def value_and_grads(fn):
    """jit of (q, k, v, proj) -> (fn's output, d<out, proj>/d(q, k, v))."""
    def loss(q, k, v, proj):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * proj), out

    @jax.jit
    def run(q, k, v, proj):
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, proj)
        return out, grads
    return run


def check(name, fn, ref_run, q, k, v, dtype, rng):
    """ref_run: `value_and_grads` of the reference, shared by a case's checks (one compile)."""
    proj = jnp.asarray(rng.normal(size=q.shape[:3] + (v.shape[-1],)), jnp.float32)
    lo = tuple(x.astype(dtype) for x in (q, k, v))
    up = tuple(x.astype(jnp.float32) for x in lo)  # the reference sees the same values
    out, grads = value_and_grads(fn)(*lo, proj)
    with jax.default_matmul_precision("highest"):
        ref_out, ref_grads = ref_run(*up, proj)
    errs = [rel(out, ref_out)] + [rel(g, r) for g, r in zip(grads, ref_grads)]
    ok = all(e == e and e < BOUND[dtype] for e in errs)
    print(f"{'ok  ' if ok else 'MISS'} {name:58s} out {errs[0]:.1e}  dq {errs[1]:.1e}  "
          f"dk {errs[2]:.1e}  dv {errs[3]:.1e}  (bound {BOUND[dtype]:.0e})", flush=True)
    return ok


def block_sparse_cases(rng):
    """(label, B, Tq, Tk, H, Dh, block, density, mask kind)."""
    return [
        ("square 1024, half the blocks", 1, 1024, 1024, 4, 64, 64, 0.5, "random"),
        ("non-multiple lengths 1000x777", 2, 1000, 777, 2, 64, 64, 0.4, "random"),
        ("empty query rows", 1, 512, 512, 2, 64, 64, 0.3, "empty_rows"),
        ("full mask (dense)", 1, 512, 512, 2, 128, 128, 1.0, "random"),
        ("head dim 128, block 128, 2k", 1, 2048, 2048, 4, 128, 128, 0.25, "random"),
        ("per-batch per-head map, block 64x128", 2, 640, 640, 3, 64, (64, 128), 0.5, "random"),
    ]


def make_map(rng, b, h, nq, nk, density, kind):
    bmap = rng.random((b, h, nq, nk)) < density
    bmap[..., np.arange(min(nq, nk)), np.arange(min(nq, nk))] = True
    if kind == "empty_rows":
        bmap[:, :, ::3] = False  # every third query block attends to nothing -> zeros
    return bmap


def main() -> int:
    if jax.default_backend() != "gpu":
        raise SystemExit("gpu_kernel_check.py needs a CUDA GPU (jax backend is "
                         f"{jax.default_backend()!r})")
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    impls = ["pallas"]
    try:
        import jax_triton  # noqa: F401
        impls.append("triton")
    except ImportError as err:
        print(f"jax-triton not importable ({err}): Triton cases skipped")
    rng = np.random.default_rng(0)
    all_ok = True
    for label, b, tq, tk, h, d, block, density, kind in block_sparse_cases(rng):
        bq, bk = (block, block) if isinstance(block, int) else block
        bmap = make_map(rng, b, h, -(-tq // bq), -(-tk // bk), density, kind)
        q = jnp.asarray(rng.normal(size=(b, tq, h, d)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(b, tk, h, d)), jnp.float32)
        v = jnp.asarray(rng.normal(size=(b, tk, h, d)), jnp.float32)
        ref = value_and_grads(lambda q, k, v, m=bmap, s=block: block_sparse_attention(
            q, k, v, m, block_size=s, impl="reference"))
        for impl in impls:
            for dtype in (jnp.float32, jnp.bfloat16):
                fn = lambda q, k, v, m=bmap, s=block, i=impl: block_sparse_attention(
                    q, k, v, m, block_size=s, impl=i)
                name = f"block_sparse {impl:6s} {jnp.dtype(dtype).name:8s} {label}"
                try:
                    all_ok &= check(name, fn, ref, q, k, v, dtype, rng)
                except ValueError as err:  # the library's own refusal (tile too big) is fine
                    print(f"ok   {name}: refused before compiling: {str(err)[:150]}", flush=True)
                except Exception as err:  # a kernel that fails to build is a miss, not a crash
                    all_ok = False
                    print(f"FAIL {name}: {type(err).__name__}: {str(err)[:400]}", flush=True)

    for label, b, t, h, d, chunk in [
        ("bidirectional 2048", 2, 2048, 4, 64, None),
        ("bidirectional non-multiple 1000, d 128", 1, 1000, 2, 128, None),
        ("block-causal chunk 256, 2048", 1, 2048, 4, 64, 256),
        ("block-causal chunk 64, non-multiple 700", 2, 700, 2, 64, 64),
    ]:
        q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32) for _ in range(3))
        ref = value_and_grads(lambda q, k, v, c=chunk: linear_attention(
            q, k, v, chunk_size=c, impl="reference"))
        for impl in impls:
            for dtype in (jnp.float32, jnp.bfloat16):
                fn = lambda q, k, v, c=chunk, i=impl: linear_attention(q, k, v, chunk_size=c, impl=i)
                name = f"linear       {impl:6s} {jnp.dtype(dtype).name:8s} {label}"
                try:
                    all_ok &= check(name, fn, ref, q, k, v, dtype, rng)
                except Exception as err:
                    all_ok = False
                    print(f"FAIL {name}: {type(err).__name__}: {str(err)[:400]}", flush=True)
    print("ALL OK" if all_ok else "SOME CASES MISSED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
