"""The one gate in front of every Triton path: a CUDA GPU and jax-triton, imported lazily
(jax-triton does not import on a CPU-only jax, and drags in ~1 GB of triton)."""

from __future__ import annotations

import importlib

import jax


def require_triton(kernels_module: str):
    """(jax_triton, the package's `triton_kernels` module named `kernels_module`), or a
    ValueError that says what is missing and what to use instead."""
    if jax.default_backend() != "gpu":
        raise ValueError(
            "impl='triton' needs a CUDA GPU; use impl='pallas' (interpret mode) or 'xla' on CPU"
        )
    try:
        import jax_triton as jt

        kernels = importlib.import_module(kernels_module)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ValueError(
            "impl='triton' needs jax-triton and triton: pip install 'unigen[gpu]' "
            f"(import failed: {err})"
        ) from err
    return jt, kernels
