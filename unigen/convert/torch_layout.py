"""PyTorch state dicts -> unigen's flat parameter names, with every key and shape checked.

torch stores a Linear's weight as (out, in); a unigen `Dense` kernel is (in, *out) with heads,
q/k/v and modulation chunks kept as their own axes (unigen.nn.layers). Converters pop the keys
they read from a `StateDict` and call `finish()`, so a key that is never read is an error
rather than silently dropped weights.
"""

from __future__ import annotations

import math
import re

import numpy as np

from unigen.errors import WeightError


class StateDict:
    """Pops keys out of a state dict, checking shapes; reports what was never used."""

    def __init__(self, sd: dict[str, np.ndarray], name: str):
        self.sd, self.name = dict(sd), name

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.sd:
            raise WeightError(f"{self.name}: missing key {key!r} (expected shape {tuple(shape)})")
        value = np.asarray(self.sd.pop(key))
        if value.shape != tuple(shape):
            raise WeightError(f"{self.name}: key {key!r} has shape {value.shape}, expected {tuple(shape)}")
        return value

    def has(self, key: str) -> bool:
        return key in self.sd

    def finish(self, ignore: tuple[str, ...] = ()) -> None:
        """Raise if keys are left that no converter read (except those matching `ignore`)."""
        left = sorted(k for k in self.sd if not any(re.fullmatch(p, k) for p in ignore))
        if left:
            raise WeightError(f"{self.name}: unknown keys {left[:8]}{' ...' if len(left) > 8 else ''}")


def linear(src: StateDict, prefix: str, d_in: int, out_shape: tuple[int, ...], dst: dict, name: str,
           *, bias: bool = True) -> None:
    """torch Linear `prefix` (prod(out), d_in) -> dst[name.kernel] (d_in, *out_shape), name.bias."""
    d_out = math.prod(out_shape)
    dst[f"{name}.kernel"] = src.take(f"{prefix}.weight", (d_out, d_in)).T.reshape(d_in, *out_shape)
    if bias:
        dst[f"{name}.bias"] = src.take(f"{prefix}.bias", (d_out,)).reshape(out_shape)


def fused_qkv(src: StateDict, prefixes: tuple[str, str, str], d_in: int, heads: int, head_dim: int,
              dst: dict, name: str, *, bias: bool = True) -> None:
    """Three torch Linears (to_q, to_k, to_v) -> one (d_in, 3, heads, head_dim) kernel."""
    parts = {}
    for which, prefix in zip("qkv", prefixes):
        linear(src, prefix, d_in, (heads, head_dim), parts, which, bias=bias)
    dst[f"{name}.kernel"] = np.stack([parts[f"{w}.kernel"] for w in "qkv"], axis=1)
    if bias:
        dst[f"{name}.bias"] = np.stack([parts[f"{w}.bias"] for w in "qkv"], axis=0)
