"""Digit augmentations and the two-view grain transform (unigen/data/augment.py)."""

import pickle

import numpy as np
import pytest

from unigen.data.augment import (DigitAugment, TwoViews, add_two_views, affine_warp,
                                 shift_image, view_seed, warp_matrix)
from unigen.errors import DataError

SHIFT_ONLY = dict(rotation_deg=0.0, scale_min=1.0, scale_max=1.0, shear_deg=0.0,
                  intensity=0.0)


@pytest.fixture(scope="module")
def digits():
    """A few real train digits as Preprocess outputs: (N,8,8,1) float32 in [-1,1]."""
    pytest.importorskip("sklearn")
    from unigen.data import Preprocess, digits_arrays

    arr = digits_arrays("train")
    pre = Preprocess(None)
    recs = [pre({"image": arr["image"][i], "label": arr["label"][i]}) for i in range(64)]
    return np.stack([r["image"] for r in recs]), np.array([r["label"] for r in recs])


def _blob():
    """An 8x8x1 'digit' with a blank 1-pixel border (so a 1-px shift loses no ink)."""
    x = np.full((8, 8, 1), -1.0, np.float32)
    x[2:6, 3:5, 0] = 1.0
    x[2, 2, 0] = 0.5
    x[5, 5, 0] = -0.25
    return x


def _com(img, bg=-1.0):
    """Ink centre of mass (y, x) of an (H,W,1) image."""
    m = np.asarray(img[..., 0], np.float64) - bg
    ys, xs = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return np.array([(m * ys).sum(), (m * xs).sum()]) / m.sum()


def test_identity_is_exact_copy(digits):
    images, _ = digits
    ident = DigitAugment.identity()
    assert ident.is_identity and not DigitAugment().is_identity
    rng = np.random.default_rng(0)
    for img in images[:16]:
        out = ident(img, rng)
        assert out.dtype == np.float32 and out is not img
        np.testing.assert_array_equal(out, img)
    rec = {"image": images[0], "label": np.int32(3)}
    out = TwoViews(ident)(rec, np.random.default_rng(1))
    assert set(out) == {"image", "label", "view_a", "view_b"}
    for k in ("image", "view_a", "view_b"):
        np.testing.assert_array_equal(out[k], images[0])
    # the default augment with identity parameters is exact too
    params = dict(rotation_deg=0.0, scale=1.0, shear_deg=0.0, dy=0, dx=0, gain=1.0)
    np.testing.assert_array_equal(DigitAugment().apply(images[1], params), images[1])
    np.testing.assert_array_equal(affine_warp(images[1], warp_matrix()), images[1])


def test_shift_moves_pixels():
    x = np.full((8, 8, 1), -1.0, np.float32)
    x[3, 4, 0] = 1.0
    x[0, 0, 0] = 0.5  # leaves the frame on a down/left move
    y = shift_image(x, 1, -1)
    expect = np.full_like(x, -1.0)
    expect[4, 3, 0] = 1.0
    np.testing.assert_array_equal(y, expect)
    z = np.arange(64, dtype=np.float32).reshape(8, 8, 1) / 64.0
    s = shift_image(z, -1, 1)
    np.testing.assert_array_equal(s[:7, 1:], z[1:, :7])
    assert np.all(s[7, :] == -1.0) and np.all(s[:, 0] == -1.0)
    assert np.all(shift_image(z, 8, 0) == -1.0)
    np.testing.assert_array_equal(shift_image(z, 0, 0), z)
    # through DigitAugment.apply: a pure shift, no interpolation
    params = dict(rotation_deg=0.0, scale=1.0, shear_deg=0.0, dy=1, dx=-1, gain=1.0)
    np.testing.assert_array_equal(DigitAugment().apply(x, params), expect)


def test_warp_convention():
    """Warps are about the centre, bilinear (exact on linear ramps), background outside."""
    z = np.random.default_rng(0).uniform(-1, 1, (8, 8, 2)).astype(np.float32)
    r = affine_warp(z, warp_matrix(90.0))
    for y in range(8):  # forward A: (x, y) offset -> (-y, x), so out[y, x] = in[7 - x, y]
        for x in range(8):
            np.testing.assert_allclose(r[y, x], z[7 - x, y], atol=1e-6)
    ys, xs = np.mgrid[0:8, 0:8].astype(np.float64)
    ramp = lambda y, x: 0.1 * y - 0.07 * x + 0.05  # noqa: E731
    img = ramp(ys, xs)[..., None].astype(np.float32)
    for a in (warp_matrix(scale=2.0), warp_matrix(10.0, 1.1, 5.0), warp_matrix(-7.0, 0.9, -3.0)):
        out = affine_warp(img, a)[..., 0]
        inv = np.linalg.inv(a)
        sx = inv[0, 0] * (xs - 3.5) + inv[0, 1] * (ys - 3.5) + 3.5
        sy = inv[1, 0] * (xs - 3.5) + inv[1, 1] * (ys - 3.5) + 3.5
        inside = (sx >= 0) & (sx <= 7) & (sy >= 0) & (sy <= 7)
        assert inside.sum() >= 30
        np.testing.assert_allclose(out[inside], ramp(sy, sx)[inside], atol=1e-6)
    small = affine_warp(np.ones((8, 8, 1), np.float32), warp_matrix(scale=0.5))
    assert small[0, 0, 0] == -1.0 and small[3, 3, 0] == 1.0  # shrunk: border is background


def test_views_differ_and_stay_in_range(digits):
    images, labels = digits
    tv = TwoViews()
    rng = np.random.default_rng(123)
    for img, lab in zip(images, labels):
        out = tv({"image": img, "label": lab, "index": np.int32(7)}, rng)
        assert out["label"] == lab and out["index"] == 7 and out["image"] is img
        for k in ("view_a", "view_b"):
            v = out[k]
            assert v.shape == img.shape and v.dtype == np.float32
            assert v.min() >= -1.0 and v.max() <= 1.0
            assert not np.array_equal(v, img)
        assert not np.array_equal(out["view_a"], out["view_b"])
        assert np.abs(out["view_a"] - out["view_b"]).mean() > 1e-3


def test_deterministic_given_seed(digits):
    images, _ = digits
    rec = {"image": images[5], "label": np.int32(0)}
    tv = TwoViews(DigitAugment(max_shift=1, intensity=0.2))
    a = tv(rec, np.random.default_rng(42))
    b = tv(rec, np.random.default_rng(42))
    c = tv(rec, np.random.default_rng(43))
    for k in ("view_a", "view_b"):
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    t2 = pickle.loads(pickle.dumps(tv))
    assert t2 == tv
    d = t2(rec, np.random.default_rng(42))
    np.testing.assert_array_equal(d["view_a"], a["view_a"])


def test_centre_of_mass_within_shift_range(digits):
    images, _ = digits
    shift_only = DigitAugment(max_shift=1, **SHIFT_ONLY)
    blob = _blob()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):  # no ink leaves the frame: the centre of mass moves by exactly (dy, dx)
        p = shift_only.sample(rng)
        d = _com(shift_only.apply(blob, p)) - _com(blob)
        np.testing.assert_allclose(d, [p["dy"], p["dx"]], atol=1e-9)
        assert np.all(np.abs(d) <= 1 + 1e-9)
        seen.add((p["dy"], p["dx"]))
    assert len(seen) == 9  # every shift in {-1, 0, 1}^2 is drawn
    # Real digits have ink in rows 0 and 7, so a 1-px shift pushes ink out of the frame and the
    # lost ink also moves the centre of mass along the other axis (module doc: worst 1.47 px
    # over the whole train split), so the bound here is max_shift + 0.5 px.
    aug = DigitAugment()
    for img in images:
        c = _com(img)
        assert np.all(np.abs(_com(shift_only(img, rng)) - c) <= shift_only.max_shift + 0.5)
        for _ in range(4):  # the default warp adds little: the ink mass sits near the centre
            assert np.all(np.abs(_com(aug(img, rng)) - c) <= aug.max_shift + 0.5)


def _records(n=10):
    rng = np.random.default_rng(7)
    return [{"image": rng.uniform(-1, 1, (8, 8, 1)).astype(np.float32),
             "label": np.int32(i % 10), "index": np.int32(i)} for i in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert set(x) == set(y) == {"image", "view_a", "view_b", "label", "index"}
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_grain_pipeline_resumes_exactly():
    grain = pytest.importorskip("grain")
    ds = grain.MapDataset.source(_records()).shuffle(seed=3).repeat(3)
    ds = add_two_views(ds, DigitAugment(), seed=11).batch(4, drop_remainder=True)
    ds = ds.to_iter_dataset()

    it = iter(ds)
    head = [next(it) for _ in range(3)]
    state = it.get_state()
    tail = [next(it) for _ in range(4)]

    it2 = iter(ds)
    it2.set_state(state)
    _assert_batches_equal([next(it2) for _ in range(4)], tail)
    it3 = iter(ds)  # a fresh iterator replays the whole stream
    _assert_batches_equal([next(it3) for _ in range(7)], head + tail)
    # the unbatched MapDataset pickles (grain workers) and gives the same records
    flat = add_two_views(grain.MapDataset.source(_records()).shuffle(seed=3).repeat(3),
                         DigitAugment(), seed=11)
    flat2 = pickle.loads(pickle.dumps(flat))
    _assert_batches_equal([flat2[i] for i in (0, 5, 17, 29)], [flat[i] for i in (0, 5, 17, 29)])


def test_grain_views_fresh_each_epoch_and_per_process():
    grain = pytest.importorskip("grain")
    recs = _records(6)
    aug = DigitAugment()

    def epochs(seed, process_index=0, before_repeat=False, reseed=True):
        ds = grain.MapDataset.source(recs)
        if before_repeat:
            ds = add_two_views(ds, aug, seed=seed, process_index=process_index)
            ds = ds.repeat(2, reseed_each_epoch=reseed)
        else:
            ds = add_two_views(ds.repeat(2, reseed_each_epoch=reseed), aug, seed=seed,
                               process_index=process_index)
        return [ds[i] for i in range(len(ds))]

    after = epochs(5)
    before = epochs(5, before_repeat=True)  # repeat hands the global index down: same stream
    for i in range(12):
        np.testing.assert_array_equal(before[i]["view_a"], after[i]["view_a"])
    for i in range(6):  # same record, epoch 0 vs epoch 1: new views
        np.testing.assert_array_equal(after[i]["image"], after[i + 6]["image"])
        assert not np.array_equal(after[i]["view_a"], after[i + 6]["view_a"])
    # repeat(reseed_each_epoch=False) hands i mod len to what sits below it: views replay
    below = epochs(5, before_repeat=True, reseed=False)
    above = epochs(5, reseed=False)  # above repeat the index is always global
    for i in range(6):
        np.testing.assert_array_equal(below[i]["view_a"], below[i + 6]["view_a"])
        assert not np.array_equal(above[i]["view_a"], above[i + 6]["view_a"])
    other_proc = epochs(5, process_index=1)
    other_seed = epochs(6)
    again = epochs(5)
    for i in range(12):
        np.testing.assert_array_equal(again[i]["view_b"], after[i]["view_b"])
        assert not np.array_equal(other_proc[i]["view_a"], after[i]["view_a"])
        assert not np.array_equal(other_seed[i]["view_a"], after[i]["view_a"])
    assert view_seed(5, 0) != view_seed(5, 1) and view_seed(5, 0) == view_seed(5, 0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_shift=-1), "max_shift"), (dict(max_shift=1.5), "max_shift"),
    (dict(max_shift=True), "max_shift"), (dict(rotation_deg=90), "rotation_deg"),
    (dict(rotation_deg=float("nan")), "rotation_deg"), (dict(scale_min=0.1), "scale_min"),
    (dict(scale_min=1.1, scale_max=1.0), "scale_max"), (dict(shear_deg=-1), "shear_deg"),
    (dict(intensity=1.0), "intensity"), (dict(background=2.0), "background"),
])
def test_validate_names_the_field(kwargs, field):
    with pytest.raises(DataError, match=f"DigitAugment.{field}="):
        DigitAugment(**kwargs)


def test_bad_inputs():
    assert DigitAugment().validate() == DigitAugment()
    with pytest.raises(DataError, match="HWC"):
        DigitAugment()(np.zeros((8, 8), np.float32), np.random.default_rng(0))
    with pytest.raises(DataError, match="max_shift"):
        DigitAugment(max_shift=8)(np.zeros((8, 8, 1), np.float32), np.random.default_rng(0))
    with pytest.raises(DataError, match="image_key"):
        TwoViews()({"img": np.zeros((8, 8, 1))}, np.random.default_rng(0))
    with pytest.raises(DataError, match="DigitAugment"):
        TwoViews(augment={"max_shift": 1})
    with pytest.raises(DataError, match="seed"):
        view_seed(-1)
