"""LZN image encoder, label anchors, and the shared linear probe (unigen.eval.probe)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unigen.lzn.encoder import ImageEncoder, ImageEncoderConfig, LabelAnchors

TINY = dict(image_size=8, channels=1, patch_size=2, width=32, depth=2, num_heads=4, mlp_ratio=2.0, latent_dim=16)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (n, 8, 8, 1)), jnp.float32)


@pytest.fixture(scope="module")
def encoders():
    """(unrolled, scanned) tiny encoders with the same weights (the scanned one holds the
    unrolled blocks' weights stacked on a leading axis)."""
    enc = ImageEncoder(ImageEncoderConfig(**TINY), rngs=nnx.Rngs(0))
    # built abstractly (no initialisers run), then filled with the unrolled weights
    scanned = nnx.eval_shape(lambda: ImageEncoder(ImageEncoderConfig(**TINY, scan_layers=True), rngs=nnx.Rngs(1)))
    for name in ("patch_embed", "norm", "head"):
        nnx.update(getattr(scanned, name), nnx.state(getattr(enc, name)))
    nnx.update(scanned.blocks, jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(b) for b in enc.blocks]))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(scanned)))
    return enc, scanned


def _apply(model):
    """The functional form (split once, merge inside jit): x -> (representation, tokens)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), m.tokens(x)

    return lambda x: f(state, x)


@pytest.fixture(scope="module")
def applied(encoders):
    return tuple(_apply(m) for m in encoders)


def test_encoder_shapes_dtype_and_jit(encoders, applied):
    enc = encoders[0]
    x = _images(3)
    z, t = applied[0](x)
    assert z.shape == (3, 16) and z.dtype == jnp.float32
    assert t.shape == (3, enc.cfg.num_tokens, 32) == (3, 16, 32)
    # the representation is the mean-pooled final tokens through the Linear head
    head = np.asarray(enc.head.kernel[...]), np.asarray(enc.head.bias[...])
    np.testing.assert_allclose(np.asarray(t).mean(axis=1) @ head[0] + head[1], np.asarray(z), rtol=1e-4, atol=1e-5)
    # rows are independent (no batch mixing)
    np.testing.assert_allclose(np.asarray(applied[0](x[::-1])[0]), np.asarray(z)[::-1], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_a_float32_representation():
    enc = ImageEncoder(ImageEncoderConfig(**TINY, dtype="bfloat16"), rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    assert jax.eval_shape(enc.tokens, x).dtype == jnp.bfloat16
    assert jax.eval_shape(enc, x).dtype == jnp.float32


def test_every_param_carries_logical_axes(encoders):
    for model in encoders:
        scan = model.cfg.scan_layers
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            axes = var.get_metadata().get("logical_axes")
            assert axes is not None, path
            stacked = scan and path[0] == "blocks"
            assert len(axes) + int(stacked) == var[...].ndim, (path, axes, var[...].shape)


def test_scan_matches_unrolled_layers(applied):
    x = _images(3)
    for a, b in zip(applied[1](x), applied[0](x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_jvp_through_the_encoder_matches_vjp(encoders):
    graphdef, state = nnx.split(encoders[1])
    x, dx = _images(2), _images(2, seed=1)
    u = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16)), jnp.float32)

    @jax.jit
    def both(state, x, dx, u):
        f = lambda x: nnx.merge(graphdef, state)(x)  # noqa: E731
        _, jv = jax.jvp(f, (x,), (dx,))
        (vjp_x,) = jax.vjp(f, x)[1](u)
        return jnp.vdot(u, jv), jnp.vdot(vjp_x, dx)

    u_jv, vjp_dx = both(state, x, dx, u)
    assert np.isfinite(float(u_jv))
    np.testing.assert_allclose(float(u_jv), float(vjp_dx), rtol=1e-4)


@pytest.mark.parametrize("overrides, match", [
    (dict(image_size=9), r"ImageEncoderConfig\.image_size=9: not divisible by patch_size=2"),
    (dict(width=30), r"ImageEncoderConfig\.width=30: not divisible by num_heads=4"),
    (dict(width=30, num_heads=3), r"ImageEncoderConfig\.width=30: must be divisible by 4"),
    (dict(depth=0), r"ImageEncoderConfig\.depth=0: must be a positive integer"),
    (dict(latent_dim=2.5), r"ImageEncoderConfig\.latent_dim=2\.5"),
    (dict(mlp_ratio=0.0), r"ImageEncoderConfig\.mlp_ratio=0\.0"),
    (dict(dtype="float64"), r"ImageEncoderConfig\.dtype='float64'"),
    (dict(attention_backend="nope"), r"ImageEncoderConfig\.attention_backend='nope'"),
    (dict(attention_backend="block_sparse"), r"ImageEncoderConfig\.attention_backend='block_sparse'"),
])
def test_bad_config_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        ImageEncoderConfig(**{**TINY, **overrides}).validate()
    with pytest.raises(ValueError, match=match):  # the model validates before building
        ImageEncoder(ImageEncoderConfig(**{**TINY, **overrides}), rngs=nnx.Rngs(0))


def test_bad_input_is_rejected_before_compilation(encoders):
    enc = encoders[0]
    with pytest.raises(ValueError, match="C=1"):
        enc(jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="built for 8x8"):
        enc(jnp.zeros((1, 16, 16, 1)))


# ---- label anchors ---------------------------------------------------------------------------

def test_label_anchors_shape_init_and_classification():
    from unigen.lzn import flow

    anchors = LabelAnchors(10, 16, rngs=nnx.Rngs(0))
    a = anchors()
    assert a.shape == (10, 16) and a.dtype == jnp.float32
    assert nnx.state(anchors, nnx.Param)["anchors"].get_metadata()["logical_axes"] == ("classes", None)
    big = LabelAnchors(64, 256, rngs=nnx.Rngs(1))()
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1.0) < 0.05  # N(0, I), as torch.randn
    np.testing.assert_array_equal(np.asarray(anchors.nearest(a)), np.arange(10))
    labels = jnp.asarray(np.arange(20) % 10)
    # latents of the label anchors (encode through the label flow) classify back to their labels
    noise = jax.random.normal(jax.random.key(0), (20, 16))
    z = flow.encode(a[labels], a, noise=noise, steps=100)
    np.testing.assert_array_equal(np.asarray(anchors.classify(z)), np.asarray(labels))
    with pytest.raises(ValueError, match="LabelAnchors.num_classes=0"):
        LabelAnchors(0, 16, rngs=nnx.Rngs(0))


# ---- linear probe ----------------------------------------------------------------------------

def _clustered(n, k=10, d=64, noise=0.1, seed=0):
    """Noisy one-hot class codes; d=64 and n=1433 train rows share the digits' probe compile."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = np.zeros((n, d), np.float32)
    x[np.arange(n), y] = 1.0
    return x + noise * rng.standard_normal((n, d)).astype(np.float32), y


def test_probe_separates_linearly_separable_features():
    from unigen.eval.probe import linear_probe

    x, y = _clustered(1433, seed=0)
    xt, yt = _clustered(364, seed=1)
    r = linear_probe(x, y, xt, yt)
    assert r["train_acc"] > 0.99 and r["test_acc"] > 0.99, r
    assert r["l2"] in [s["l2"] for s in r["selection"]] and r["num_classes"] == 10


def test_probe_on_random_features_is_at_chance():
    from unigen.eval.probe import linear_probe

    rng = np.random.default_rng(3)
    _, y = _clustered(1433, seed=0)
    _, yt = _clustered(364, seed=1)
    r = linear_probe(rng.standard_normal((1433, 64)), y, rng.standard_normal((364, 64)), yt)
    assert r["test_acc"] < 0.2, r  # chance is 0.1


@pytest.fixture(scope="module")
def pixel_baseline():
    from unigen.eval.probe import raw_pixel_baseline
    return raw_pixel_baseline()


def test_raw_pixel_baseline_on_digits(pixel_baseline):
    r = pixel_baseline
    print(f"raw-pixel linear probe: test_acc={r['test_acc']:.4f} train_acc={r['train_acc']:.4f} l2={r['l2']}")
    assert (r["n_train"], r["n_test"], r["num_features"]) == (1433, 364, 64)
    assert 0.93 <= r["test_acc"] <= 0.99, r
    assert r["train_acc"] >= r["test_acc"]


def test_penalty_is_chosen_without_the_test_set(pixel_baseline):
    from unigen.eval.probe import digits_pixels, linear_probe

    x, y = digits_pixels("train")
    xt, yt = digits_pixels("test")
    r = linear_probe(x, y, xt, np.random.default_rng(0).permutation(yt))
    assert r["l2"] == pixel_baseline["l2"]
    assert r["selection"] == pixel_baseline["selection"]
    assert r["train_acc"] == pixel_baseline["train_acc"]
    assert r["test_acc"] < 0.3  # the test labels no longer match their images
    # a fixed penalty skips selection
    fixed = linear_probe(x, y, xt, yt, l2=pixel_baseline["l2"])
    assert fixed["selection"] == [] and fixed["test_acc"] == pixel_baseline["test_acc"]


def test_probe_rejects_mismatched_inputs():
    from unigen.eval.probe import linear_probe

    x, y = _clustered(50)
    with pytest.raises(ValueError, match="train_labels must be"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="test_features have 63 dimensions"):
        linear_probe(x, y, x[:, :-1], y)
