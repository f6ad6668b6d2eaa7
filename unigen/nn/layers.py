"""Dense layers whose parameters carry logical axis names (docs/design.md §7).

`Dense` is a general linear map: the last `len(in_dims)` axes of the input contract with
the first axes of a kernel shaped `in_dims + out_dims`. Multi-axis kernels keep q/k/v and
heads as their own axes (e.g. qkv is (D, 3, H, Dh)) so tensor parallelism can split heads
without reshuffling. Each Param records its logical axes as `logical_axes` metadata.

The product carries a hand-written VJP (`dense_general`): JAX's own rule forms the kernel
gradient as dot_general(dY, X) followed by a transpose, and XLA:CPU then makes dY the
operand it transposes in memory, the widest one for qkv and fc1 (e.g. 8192 x 1536 per
DiT-S/2 block at batch 32). Writing the product with the narrower of X and dY first makes
XLA transpose that one instead: the DiT-S/2 train step went from 9.0 to 8.2 s
(bench/RESULTS.md). It is used only inside `unigen.nn.cpu_custom_vjps()` on a CPU, so forward
mode works by default (see `ad_mode`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from unigen.nn.ad_mode import use_custom_vjps

Init = Callable[..., jax.Array]


def xavier_uniform(n_in_axes: int, n_out_axes: int) -> Init:
    """Glorot-uniform over the flattened (fan_in, fan_out) view of a multi-axis kernel,
    i.e. what torch's xavier_uniform_ gives the equivalent 2-D Linear weight."""
    return nnx.initializers.variance_scaling(
        1.0, "fan_avg", "uniform",
        in_axis=tuple(range(n_in_axes)),
        out_axis=tuple(range(n_in_axes, n_in_axes + n_out_axes)),
    )


def param(init: Init, shape: Sequence[int], axes: Sequence[str | None], rngs: nnx.Rngs,
          dtype=jnp.float32) -> nnx.Param:
    """An nnx.Param with its logical axis names recorded as metadata."""
    if len(shape) != len(axes):
        raise ValueError(f"param of shape {tuple(shape)} given {len(axes)} axis names {tuple(axes)}")
    return nnx.Param(init(next_key(rngs.params), tuple(shape), dtype), logical_axes=tuple(axes))


def next_key(stream: nnx.RngStream) -> jax.Array:
    """The key `stream()` returns, with the same counter step (fold_in(key, count); count + 1), so
    parameters are those flax would draw for the same seed.

    flax's `RngStream.__call__` steps the counter in place (`count[...] += 1`), and
    `Variable.set_value` then compares `getattr(value, 'sharding', None)` of the old and new count.
    Under a trace (nnx.eval_shape, jit) both are tracers, whose `.sharding` raises an
    AttributeError whose message JAX builds by walking every equation traced so far
    (`DynamicJaxprTracer._origin_msg`, jax 0.10; reported upstream as jax-ml/jax#40041). One walk
    per parameter made abstract builds quadratic in the parameter count: on 2 CPU cores SD3.5-large
    (unscanned) took 13 s against 0.6 s this way (bench/build_time.py, bench/RESULTS.md). Replacing
    the counter whole (`set_value` without an index) stores the same value without that probe. A
    flax whose streams lack these Variable methods draws its own way (`stream()`)."""
    check = getattr(stream.count, "_check_can_update", None)
    if check is None or not hasattr(stream.count, "set_value"):
        return stream()
    check()  # the guard flax applies: no writes to a stream from an inner trace level
    count = stream.count[...]
    key = jax.random.fold_in(stream.key[...], count)
    stream.count.set_value(count + 1)
    return key


def _contract_trailing(n_in: int, x_ndim: int):
    """dot_general dimension numbers: x's last n_in axes against the kernel's first n_in."""
    return ((tuple(range(x_ndim - n_in, x_ndim)), tuple(range(n_in))), ((), ()))


def _dense(x, kernel, n_in):
    return jax.lax.dot_general(x, kernel, _contract_trailing(n_in, x.ndim))


_dense_custom_vjp = jax.custom_vjp(_dense, nondiff_argnums=(2,))


def _dense_fwd(x, kernel, n_in):
    return _dense(x, kernel, n_in), (x, kernel)


def _dense_bwd(n_in, residuals, dy):
    x, kernel = residuals
    n_batch = x.ndim - n_in
    n_out = kernel.ndim - n_in
    # dX = dY . W^T: contract dY's output axes with the kernel's output axes.
    out_axes = (tuple(range(n_batch, dy.ndim)), tuple(range(n_in, kernel.ndim)))
    dx = jax.lax.dot_general(dy, kernel, (out_axes, ((), ())))
    # dW = X^T . dY over all batch axes. XLA:CPU's matmul wants the first operand's
    # contracted axis innermost, so it transposes that operand in memory: give it the
    # narrower of X and dY (the result is only kernel-sized to transpose back).
    batch = (tuple(range(n_batch)), tuple(range(n_batch)))
    if math.prod(kernel.shape[:n_in]) <= math.prod(kernel.shape[n_in:]):
        dkernel = jax.lax.dot_general(x, dy, (batch, ((), ())))
    else:
        dkernel_t = jax.lax.dot_general(dy, x, (batch, ((), ())))
        dkernel = jnp.transpose(dkernel_t, tuple(range(n_out, n_out + n_in)) + tuple(range(n_out)))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_dense_custom_vjp.defvjp(_dense_fwd, _dense_bwd)


def dense_general(x: jax.Array, kernel: jax.Array, n_in: int = 1) -> jax.Array:
    """Contract x's last `n_in` axes with the first `n_in` axes of `kernel`.

    Same values and gradients as `jax.lax.dot_general`; inside `cpu_custom_vjps()` on a CPU,
    reverse mode goes through the VJP above, elsewhere through JAX's own rules."""
    if x.shape[x.ndim - n_in:] != kernel.shape[:n_in]:
        raise ValueError(f"dense_general: input trailing axes {x.shape[x.ndim - n_in:]} do not match "
                         f"kernel input axes {kernel.shape[:n_in]} (input {x.shape}, kernel {kernel.shape})")
    return (_dense_custom_vjp if use_custom_vjps() else _dense)(x, kernel, n_in)


class Dense(nnx.Module):
    """y = x · W + b with W shaped in_dims + out_dims (contracting the trailing input axes)."""

    def __init__(self, in_dims: int | Sequence[int], out_dims: int | Sequence[int], *,
                 axes: Sequence[str | None], rngs: nnx.Rngs, use_bias: bool = True,
                 kernel_init: Init | None = None, bias_init: Init = nnx.initializers.zeros_init(),
                 dtype=None, param_dtype=jnp.float32):
        in_dims = (in_dims,) if isinstance(in_dims, int) else tuple(in_dims)
        out_dims = (out_dims,) if isinstance(out_dims, int) else tuple(out_dims)
        kernel_init = kernel_init or xavier_uniform(len(in_dims), len(out_dims))
        self.n_in = len(in_dims)
        self.dtype = dtype
        self.kernel = param(kernel_init, in_dims + out_dims, axes, rngs, param_dtype)
        self.bias = param(bias_init, out_dims, tuple(axes)[self.n_in:], rngs, param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = dense_general(x.astype(dtype), self.kernel[...].astype(dtype), self.n_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
