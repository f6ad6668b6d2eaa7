"""Dense layers whose parameters carry logical axis names (DESIGN.md §7).

`Dense` is a general linear map: the last `len(in_dims)` axes of the input contract with
the first axes of a kernel shaped `in_dims + out_dims`. Multi-axis kernels keep q/k/v and
heads as their own axes (e.g. qkv is (D, 3, H, Dh)) so tensor parallelism can split heads
without reshuffling. Each Param records its logical axes as `logical_axes` metadata.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


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
        kernel = self.kernel[...].astype(dtype)
        y = jax.lax.dot_general(
            x.astype(dtype), kernel,
            (((tuple(range(x.ndim - self.n_in, x.ndim))), tuple(range(self.n_in))), ((), ())),
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
