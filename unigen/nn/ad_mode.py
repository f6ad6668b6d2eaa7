"""Which derivative rules the building blocks trace with.

By default every block uses JAX's own derivative rules, so `jax.jvp`, `jax.jacfwd`,
`jax.linearize` and `jax.grad` all work through any model, on every platform (docs/design.md §13).

`Dense` and the "einsum" attention backend also carry hand-written VJPs (`jax.custom_vjp`)
that make the backward pass faster on XLA:CPU (bench/RESULTS.md) and give the same gradients
up to float rounding. A custom VJP has no forward-mode rule, so they are opt-in, and only on
a CPU:

    with unigen.nn.cpu_custom_vjps():        # what the trainer does for its reverse-mode step
        loss, grads = jax.value_and_grad(loss_fn)(params)

Outside a CPU backend the context changes nothing. The switch is read while tracing, so it
must surround the trace (the call inside a jitted function), not the call of a compiled one.
`jvp_compatible()` turns the custom VJPs off inside an enclosing `cpu_custom_vjps()`.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_CPU_CUSTOM_VJPS = contextvars.ContextVar("unigen_cpu_custom_vjps", default=False)


@contextlib.contextmanager
def cpu_custom_vjps(enabled: bool = True):
    """Trace with the CPU-tuned custom VJPs (reverse mode only; a no-op off CPU)."""
    token = _CPU_CUSTOM_VJPS.set(bool(enabled))
    try:
        yield
    finally:
        _CPU_CUSTOM_VJPS.reset(token)


def jvp_compatible(enabled: bool = True):
    """Trace with JAX's own derivative rules only (the default outside `cpu_custom_vjps`)."""
    return cpu_custom_vjps(not enabled)


def use_custom_vjps() -> bool:
    """True while tracing inside `cpu_custom_vjps()` on a CPU backend."""
    return _CPU_CUSTOM_VJPS.get() and jax.default_backend() == "cpu"
