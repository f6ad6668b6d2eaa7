"""Checks that every model config's `validate()` makes; `bad(field, why)` raises the config's own
error, so each message names that config's field (`MMDiTConfig.num_layers=0: ...`)."""

from __future__ import annotations

from unigen.nn.attention import available_backends

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_compute_options(bad, dtype: str, backend: str) -> None:
    """The runtime compute options: the compute dtype and the attention backend."""
    if dtype not in COMPUTE_DTYPES:
        bad("dtype", f"use one of {COMPUTE_DTYPES}")
    if backend not in available_backends():
        bad("attention_backend", f"choose one of {available_backends()}")


def is_positive_int(value) -> bool:
    """A Python int > 0, not a bool (configs are written to JSON, where numpy ints do not go)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_ints(bad, cfg, fields) -> None:
    """Each of `fields` of `cfg` is a positive Python int."""
    for field in fields:
        if not is_positive_int(getattr(cfg, field)):
            bad(field, "must be a positive integer")
