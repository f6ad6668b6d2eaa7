"""unigen.nn.resize.resize_bicubic against torch.nn.functional.interpolate(mode="bicubic",
align_corners=False): up, down, non-square, antialias on and off, size= and scale_factor=."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.nn.resize import bicubic_weights, resize_bicubic

CASES = [((4, 4), (7, 9)), ((4, 4), (6, 3)), ((16, 16), (6, 3)), ((5, 7), (5, 7)), ((9, 6), (4, 13)),
         ((37, 37), (16, 16)), ((3, 8), (11, 2))]


def torch_resize(x, antialias, **how):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(t, mode="bicubic", align_corners=False, antialias=antialias, **how)
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("antialias", [False, True], ids=["plain", "antialias"])
@pytest.mark.parametrize("shapes", CASES, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b in CASES])
def test_matches_torch_size(shapes, antialias):
    (h, w), size = shapes
    x = np.random.RandomState(h * 31 + w).randn(2, h, w, 3).astype(np.float32)
    ours = np.asarray(resize_bicubic(jnp.asarray(x), size, antialias=antialias))
    ref = torch_resize(x, antialias, size=size)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("antialias", [False, True], ids=["plain", "antialias"])
@pytest.mark.parametrize("factor", [(2.3, 0.45), (0.7, 1.5)])
def test_matches_torch_scale_factor(factor, antialias):
    # with scale_factor torch samples at 1/factor, not in/out: 5 * 2.3 -> 11 pixels, grid step 1/2.3
    x = np.random.RandomState(1).randn(1, 5, 9, 2).astype(np.float32)
    ours = np.asarray(resize_bicubic(jnp.asarray(x), scale_factor=factor, antialias=antialias))
    ref = torch_resize(x, antialias, scale_factor=factor)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5
    by_size = np.asarray(resize_bicubic(jnp.asarray(x), ref.shape[1:3], antialias=antialias))
    assert np.abs(by_size - ref).max() > 1e-4  # the two grids really differ


def test_not_jax_cubic_and_differentiable():
    x = jnp.asarray(np.random.RandomState(2).randn(1, 6, 6, 1).astype(np.float32))
    ours = resize_bicubic(x, (9, 9))
    assert float(jnp.abs(ours - jax.image.resize(x, (1, 9, 9, 1), "cubic")).max()) > 1e-3
    g = jax.grad(lambda a: resize_bicubic(a, (4, 5), antialias=True).sum())(x)
    # the gradient of a sum is each input pixel's total weight: the column sums of the matrices
    expect = np.outer(bicubic_weights(6, 4, True).sum(0), bicubic_weights(6, 5, True).sum(0))
    np.testing.assert_allclose(np.asarray(g)[0, :, :, 0], expect, atol=1e-5)


def test_rows_sum_to_one_and_errors():
    for args in ((5, 12, False), (12, 5, False), (12, 5, True), (5, 12, True)):
        np.testing.assert_allclose(bicubic_weights(*args).sum(1), 1.0, atol=1e-12)
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="exactly one"):
        resize_bicubic(x)
    with pytest.raises(ValueError, match="NHWC"):
        resize_bicubic(x[0], (2, 2))
    with pytest.raises(ValueError, match="positive integers"):
        resize_bicubic(x, (0, 2))
