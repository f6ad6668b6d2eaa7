"""Which derivative rules the building blocks trace with.

`Dense` and the "einsum" attention backend carry hand-written VJPs (`jax.custom_vjp`): on
XLA:CPU they make the DiT-S/2 train step faster (bench/RESULTS.md), and on any backend they
give JAX's own gradients up to float rounding. A custom VJP has no forward-mode rule, so
`jax.jvp`, `jax.jacfwd` or `jax.linearize` through a model fail with JAX's "can't apply
forward-mode autodiff (jvp) to a custom_vjp function". Objectives that need a JVP of the
network (consistency models, MeanFlow) trace the model inside `jvp_compatible()`:

    with unigen.nn.jvp_compatible():
        out, dout = jax.jvp(lambda x: model(x, t, y), (x,), (v,))

Inside it, Dense uses a plain `dot_general` and attention's "auto" backend resolves to "xla"
("einsum" runs its forward without the custom VJP). The switch is read while tracing, so it
must surround the trace (the call inside a jitted function), not the call of a compiled one.
"""

from __future__ import annotations

import contextlib
import contextvars

_JVP_COMPATIBLE = contextvars.ContextVar("unigen_jvp_compatible", default=False)


@contextlib.contextmanager
def jvp_compatible(enabled: bool = True):
    """Trace with JAX's own derivative rules only, so forward mode works (see module doc)."""
    token = _JVP_COMPATIBLE.set(bool(enabled))
    try:
        yield
    finally:
        _JVP_COMPATIBLE.reset(token)


def is_jvp_compatible() -> bool:
    return _JVP_COMPATIBLE.get()
