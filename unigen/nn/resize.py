"""Bicubic resize of NHWC arrays with PyTorch's numbers.

    resize_bicubic(x, (out_h, out_w), antialias=False)
        == torch.nn.functional.interpolate(x_nchw, size=(out_h, out_w), mode="bicubic",
                                           align_corners=False, antialias=antialias)   (as NHWC)

Why it exists: models ported from PyTorch resize with torch's bicubic, e.g. transformers' DINOv2
interpolates its position table that way. `jax.image.resize(..., "cubic")` uses Keys' kernel
with a = -0.5 and its own border handling, so it does not give torch's plain bicubic numbers.

torch's semantics (aten UpSample.h / UpSampleKernel.cpp), reproduced per axis:
  * scale: in/out when `size` is given; 1/scale_factor when `scale_factor` is (then
    out = floor(in * scale_factor)). The two differ whenever in * scale_factor is not an integer.
  * plain bicubic: source coordinate s = scale (i + 0.5) - 0.5, four taps floor(s) - 1 .. floor(s)
    + 2 weighted by Keys' cubic with a = -0.75 (OpenCV's); taps outside the input are clamped to
    the border pixel (their weights add to it).
  * antialias: a different kernel, Pillow's: Keys' cubic with a = -0.5 (aten `aa_filter`, whose
    comment says so: "-0.5 for bicubic, antialiasing=true (compatibility with PIL)"), stretched
    by the scale when downsampling (support 2 scale, argument divided by scale); taps run over
    [trunc(c - support + 0.5), trunc(c + support + 0.5)) with c = scale (i + 0.5), cut at the
    borders (no clamping) and the weights renormalised to sum to one. So antialias=True changes
    the numbers even when upsampling, everywhere, not only at the borders. (This one is what
    `jax.image.resize(..., "cubic", antialias=True)` computes too, to ~1e-6; its plain cubic is not.)

Each axis is a dense (out, in) weight matrix built in numpy (float64) for the static shapes, and
the resize is two matrix products: exact up to float32 rounding, cheap at the sizes it is used for
(position tables, input images), and differentiable in x.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

PLAIN_A = -0.75      # torch's plain bicubic (aten get_cubic_upsample_coefficients)
ANTIALIAS_A = -0.5   # torch's antialiased bicubic (aten aa_filter with use_keys_cubic, as Pillow)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient `a` (aten cubic_convolution1/2)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=256)
def bicubic_weights(in_size: int, out_size: int, antialias: bool = False,
                    scale_factor: float | None = None) -> np.ndarray:
    """The (out_size, in_size) float64 matrix of one axis of torch's bicubic resize."""
    # area_pixel_compute_scale (align_corners=False): a given scale_factor wins over in/out
    scale = 1.0 / scale_factor if scale_factor else in_size / out_size
    w = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if not antialias:
        src = scale * (rows + 0.5) - 0.5          # area_pixel_compute_source_index(cubic=True): no clamp at 0
        base = np.floor(src)
        t = src - base
        for k in range(-1, 3):
            taps = np.clip(base + k, 0, in_size - 1).astype(np.int64)   # upsample_get_value_bounded
            np.add.at(w, (rows, taps), _cubic(t - k, PLAIN_A))
        return w
    # _compute_indices_min_size_weights_aa
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    for i in rows:
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)          # int() truncates toward zero, as the C++ cast
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        wt = _cubic((taps - center + 0.5) * invscale, ANTIALIAS_A)
        total = wt.sum()
        w[i, lo:hi] = wt / total if total != 0 else wt
    return w


def _output_size(in_size: int, size: int | None, scale_factor: float | None) -> int:
    return int(size) if size is not None else int(math.floor(in_size * scale_factor))


def resize_bicubic(x: jax.Array, size: tuple[int, int] | None = None, *, antialias: bool = False,
                   scale_factor: float | tuple[float, float] | None = None) -> jax.Array:
    """Resize NHWC `x` to `size` = (out_h, out_w) as torch's bicubic interpolate (align_corners=False).

    Give exactly one of `size` and `scale_factor` (a number or an (h, w) pair), as in torch: with
    `scale_factor` the output is floor(in * factor) and the sampling grid uses 1/factor (torch's
    default recompute_scale_factor=None). Computes in float32 at least; returns x's dtype."""
    if x.ndim != 4:
        raise ValueError(f"resize_bicubic expects an NHWC array; got shape {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("resize_bicubic: give exactly one of size=(out_h, out_w) and scale_factor=")
    h, w = x.shape[1], x.shape[2]
    if scale_factor is not None:
        factors = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        if len(factors) != 2 or not all(isinstance(f, (int, float)) and f > 0 for f in factors):
            raise ValueError(f"resize_bicubic: scale_factor={scale_factor!r} must be a positive number or pair")
        sizes = (None, None)
    else:
        factors = (None, None)
        sizes = tuple(size)
        if len(sizes) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
            raise ValueError(f"resize_bicubic: size={size!r} must be a pair of positive integers (out_h, out_w)")
    out_h, out_w = (_output_size(n, s, f) for n, s, f in zip((h, w), sizes, factors))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_bicubic: output size {out_h}x{out_w} from {h}x{w} is empty")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    wh = jnp.asarray(bicubic_weights(h, out_h, bool(antialias), factors[0]), dtype)
    ww = jnp.asarray(bicubic_weights(w, out_w, bool(antialias), factors[1]), dtype)
    hi = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on accelerators: these are exact weights
    y = jnp.einsum("oh,bhwc->bowc", wh, x.astype(dtype), precision=hi)
    y = jnp.einsum("pw,bowc->bopc", ww, y, precision=hi)
    return y.astype(x.dtype)
