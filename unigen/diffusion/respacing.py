"""Timestep respacing for discrete Gaussian diffusion (IDDPM / DiT `space_timesteps`).

A respaced process keeps a subset S of the original timesteps, recomputes
beta'_i = 1 - abar[s_i] / abar[s_{i-1}] from the kept cumulative alphas (so the
marginals q(x_t | x_0) at the kept steps are unchanged), and keeps a
`timestep_map` so that the network is still called with the *original* indices
(the reference wraps the model with this map).

Accepted specs (same meaning as improved-diffusion's `space_timesteps`):
  None or ""     every step (no respacing)
  "250"          one section: 250 steps evenly strided over 0..T-1
  "10,15,20"     T split into 3 near-equal sections, strided to 10, 15, 20 steps
  [10, 15, 20]   the same as a list of ints
  "ddim50"       the DDIM paper's integer stride: range(0, T, k) with exactly 50 entries
  "at:0,250,500" exactly these timesteps (a released scheduler's own grid, e.g. diffusers'
                 "leading" spacing with a steps_offset, which no stride rule above yields)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _parse_counts(spec: str) -> list[int]:
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"timestep_respacing={spec!r} is not understood: use None, 'N', 'N1,N2,...' "
            "(steps per section) or 'ddimN'") from None
    return counts


def space_timesteps(num_timesteps: int, spec: str | Sequence[int] | None) -> list[int]:
    """Sorted list of original timesteps kept by `spec` (see module docstring)."""
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return list(range(num_timesteps))
    if isinstance(spec, str) and spec.startswith("at:"):
        try:
            kept = sorted({int(part) for part in spec[3:].split(",")})
        except ValueError:
            raise ValueError(f"timestep_respacing={spec!r}: expected 'at:T1,T2,...' with integer timesteps") from None
        if kept[0] < 0 or kept[-1] >= num_timesteps:
            raise ValueError(f"timestep_respacing={spec!r}: timesteps must lie in 0..{num_timesteps - 1}")
        return kept
    if isinstance(spec, str) and spec.startswith("ddim"):
        try:
            wanted = int(spec[len("ddim"):])
        except ValueError:
            raise ValueError(f"timestep_respacing={spec!r}: expected 'ddimN' with an integer N") from None
        # The reference tries every integer stride 1..T-1 and keeps the first that
        # yields exactly `wanted` steps starting at 0.
        for stride in range(1, num_timesteps):
            steps = list(range(0, num_timesteps, stride))
            if len(steps) == wanted:
                return steps
        raise ValueError(
            f"timestep_respacing={spec!r}: no integer stride gives exactly {wanted} steps out of "
            f"{num_timesteps}; pick another N (e.g. a divisor of {num_timesteps}) or use '{wanted}'")
    counts = _parse_counts(spec) if isinstance(spec, str) else [int(c) for c in spec]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"timestep_respacing={spec!r}: every section needs at least 1 step")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)  # the first `extra` sections are one longer
        if count > size:
            raise ValueError(
                f"timestep_respacing={spec!r}: section {i} has {size} original steps but asks for "
                f"{count}; lower that count or use fewer sections")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional index and round (Python's round: half to even),
        # exactly as the reference does, so the kept set matches bit for bit.
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(kept))


def respace_betas(alphas_cumprod: np.ndarray, kept: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the respaced process and its map to original timesteps (float64, int32)."""
    kept = np.asarray(sorted(kept), dtype=np.int64)
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[kept]
    prev = np.concatenate([[1.0], abar[:-1]])
    return 1.0 - abar / prev, kept.astype(np.int32)
