"""The LZN family end to end: the DiT vector condition, the "lzn" model kind (config, JSON,
save/load with nested scanned blocks, components), the three tasks in quick mode through the
trainer, the classifier and the conditional latents."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.lzn import flow
from unigen.lzn.encoder import ImageEncoderConfig
from unigen.models.dit import DiT, dit_config
from unigen.models.lzn import LZN, LZNConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ENCODER = ["--config.model.encoder.width=16", "--config.model.encoder.depth=1",
                "--config.model.encoder.num_heads=2", "--config.model.encoder.latent_dim=8"]
TINY_DECODER = ["--config.model.decoder.depth=1", "--config.model.decoder.hidden_size=32",
                "--config.model.decoder.num_heads=2"]
QUICK = ["--config.train.steps=3", "--config.train.batch_size=16", "--config.train.warmup_steps=1",
         "--config.train.log_every=1", "--config.train.checkpoint_every=3", "--config.train.sample_every=3",
         "--config.sample.steps=2", "--config.sample.per_class=2", "--config.eval.num_samples=40",
         "--config.eval.seeds=1", "--config.eval.batch_size=40"]


def config(name, *overrides):
    from unigen.training.config import apply_override, load_config_file, parse_overrides
    cfg = load_config_file(os.path.join(ROOT, "configs", name))
    for key, value in parse_overrides(list(overrides))[0]:
        apply_override(cfg, key, value)
    return cfg


def randomized(module, seed=0, scale=0.3):
    """The module with every parameter redrawn (adaLN-Zero starts as the identity)."""
    graphdef, state = nnx.split(module)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def tiny_lzn(**kw):
    enc = ImageEncoderConfig(width=16, depth=2, num_heads=2, latent_dim=8)
    dec = dit_config("DiT-S/2", input_size=8, in_channels=1, depth=2, hidden_size=32, num_heads=2, learn_sigma=False)
    return LZNConfig(**{"encoder": enc, "decoder": dec, "num_classes": 10, "decoder_label": True, **kw})


# ---- the DiT vector condition ---------------------------------------------------------------------
def test_dit_vector_condition_changes_the_output_and_costs_nothing_when_off():
    base = dit_config("DiT-S/2", input_size=8, in_channels=1, depth=1, hidden_size=32, num_heads=2, num_classes=0)
    plain = DiT(base, rngs=nnx.Rngs(0))
    with_z = DiT(dataclasses.replace(base, vector_dim=5), rngs=nnx.Rngs(0))
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert count(with_z) == count(plain) + 5 * 32 + 32 + 32 * 32 + 32
    model = randomized(with_z)
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([10.0, 500.0])
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
    a, b = model(x, t, z=z), model(x, t, z=z[::-1])
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_allclose(model(x[:1], t[:1], z=z[:1]), a[:1], atol=1e-5)
    with pytest.raises(ValueError, match="vector condition z of shape"):
        model(x, t)
    with pytest.raises(ValueError, match="no vector condition"):
        randomized(plain)(x, t, z=z)
    with pytest.raises(ValueError, match="vector_dim"):
        dataclasses.replace(base, vector_dim=-1).validate()


# ---- the model kind -------------------------------------------------------------------------------
def test_lzn_config_wires_the_decoder_and_rejects_bad_fields():
    cfg = tiny_lzn()
    assert cfg.decoder.vector_dim == 8 and cfg.decoder.num_classes == 10
    assert dataclasses.replace(cfg, decoder_label=False).decoder.num_classes == 0
    assert dataclasses.replace(cfg, dtype="bfloat16").encoder.dtype == "bfloat16"
    from unigen.models import get_model_kind
    kind = get_model_kind("lzn")
    again = kind.config_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg
    with pytest.raises(ValueError, match="decoder_label"):
        LZNConfig(encoder=cfg.encoder, decoder=None, num_classes=10, decoder_label=True).validate()
    with pytest.raises(ValueError, match="unknown ImageEncoderConfig fields"):
        LZNConfig(encoder={"widht": 3})
    from unigen.errors import ConfigError
    from unigen.training.build import validate
    cfg_bad = config("lzn_gen_digits.py")
    cfg_bad.model.encoder.image_size = 16
    with pytest.raises(ConfigError, match=r"config.model.encoder.image_size"):
        validate(cfg_bad)
    with pytest.raises(ConfigError, match="config.model.num_classes=0"):
        validate(config("lzn_cls_digits.py", "--config.model.num_classes=0", "--config.model.decoder_label=False"))
    with pytest.raises(ConfigError, match="config.lzn.encode_solver"):
        validate(config("lzn_gen_digits.py", "--config.lzn.encode_solver=rk4"))
    with pytest.raises(ConfigError, match="model.kind='lzn'"):
        validate(config("dit_digits.py", "--config.task.name=lzn_generation"))


def test_save_and_load_with_nested_scanned_blocks(tmp_path):
    model = randomized(LZN(dataclasses.replace(tiny_lzn(), scan_layers=True), rngs=nnx.Rngs(0)))
    unigen.save_pretrained(model, str(tmp_path / "lzn"))
    flat = json.load(open(tmp_path / "lzn" / "unigen_config.json"))
    assert flat["kind"] == "lzn" and flat["config"]["encoder"]["latent_dim"] == 8
    loaded = unigen.from_pretrained(str(tmp_path / "lzn"), scan_layers=False)
    assert not loaded.cfg.scan_layers and isinstance(loaded.encoder.blocks, nnx.List)
    x = jax.random.uniform(jax.random.PRNGKey(2), (3, 8, 8, 1), minval=-1, maxval=1)
    np.testing.assert_allclose(loaded.encoder(x), model.encoder(x), atol=2e-5)
    z, t, y = model.encoder(x), jnp.array([1.0, 300.0, 900.0]), jnp.array([0, 3, 9])
    # The scanned and unrolled layouts fuse differently: float32 rounding, relative to outputs of
    # magnitude ~10 (a 4.6e-5 difference at 11.0 was seen once).
    np.testing.assert_allclose(loaded(x, t, z, y), model(x, t, z, y), rtol=1e-5, atol=2e-5)
    assert unigen.from_pretrained(str(tmp_path / "lzn"), component="encoder").cfg.latent_dim == 8
    with pytest.warns(UserWarning, match="no reference images"):
        clf = unigen.from_pretrained(str(tmp_path / "lzn"), component="classifier")
    assert clf(x).shape == (3, 10)
    with pytest.raises(unigen.convert.WeightError, match="components"):
        unigen.from_pretrained(str(tmp_path / "lzn"), component="vae")


# ---- latents and the classifier -------------------------------------------------------------------
def test_label_zone_latents_classify_as_their_label():
    from unigen.lzn.encoder import LabelAnchors
    from unigen.tasks.lzn import LZNOptions, label_zone_latents
    labels = LabelAnchors(10, 8, rngs=nnx.Rngs(3))
    y = jnp.arange(400) % 10
    noise = jax.random.normal(jax.random.PRNGKey(4), (400, 8))
    z = label_zone_latents(labels(), y, noise, LZNOptions())
    # Euler both ways (100 steps each, the reference's label flow) is not exactly invertible:
    # a few latents drawn near a zone's border come back to a neighbour (1.5% here).
    assert np.mean(np.asarray(labels.classify(z)) == np.asarray(y)) >= 0.97
    assert float(jnp.std(z[y == 0], axis=0).mean()) > 0.3  # the noise spreads a class over its zone


def test_classifier_with_reference_is_independent_of_the_batch():
    from unigen.lzn.classifier import LZNClassifier
    model = randomized(LZN(tiny_lzn(), rngs=nnx.Rngs(0)), scale=0.2)
    x = jax.random.uniform(jax.random.PRNGKey(5), (6, 8, 8, 1), minval=-1, maxval=1)
    ref = jax.random.uniform(jax.random.PRNGKey(6), (12, 8, 8, 1), minval=-1, maxval=1)
    clf = LZNClassifier(model.encoder, model.labels, ref)
    whole = clf(x)
    np.testing.assert_allclose(clf(x[2:3]), whole[2:3], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(jnp.exp(whole).sum(-1), 1.0, atol=1e-5)
    # per image: its latent is encoded with the reference anchors plus its own
    a, r = model.encoder(x[:1]), model.encoder(ref)
    z = flow.encode(a, jnp.concatenate([r, a]), steps=20, solver="dpm++2m")
    np.testing.assert_allclose(clf.latents(x[:1]), z, atol=1e-5)
    batch = LZNClassifier(model.encoder, model.labels, None)
    np.testing.assert_allclose(batch.latents(x), flow.encode(model.encoder(x), model.encoder(x), steps=20,
                                                            solver="dpm++2m"), atol=1e-5)
    assert clf.predict(x).shape == (6,)
    with pytest.raises(ValueError, match="reference images have shape"):
        LZNClassifier(model.encoder, model.labels, jnp.zeros((4, 4, 4, 1)))


# ---- the three tasks through the trainer, quick mode ----------------------------------------------
def _train(cfg, workdir):
    from unigen.training.loop import train
    return train(cfg, str(workdir), progress=False)


def test_generation_task_trains_samples_and_evaluates(tmp_path):
    result = _train(config("lzn_gen_digits.py", *TINY_ENCODER, *TINY_DECODER, *QUICK), tmp_path / "gen")
    assert np.isfinite(result["loss"]) and "recon_loss" in result and "label_loss" not in result
    assert (tmp_path / "gen" / "samples_0000003.png").exists()
    assert result["eval"]["samples"]["fd"]["mean"] > 0 and "classification" not in result["eval"]
    encoder = unigen.from_pretrained(str(tmp_path / "gen"), component="encoder")
    assert encoder(jnp.zeros((2, 8, 8, 1))).shape == (2, 8)
    with pytest.raises(unigen.convert.WeightError, match="needs label anchors"):
        unigen.from_pretrained(str(tmp_path / "gen"), component="classifier")


def test_classification_task_classifies_and_generates_each_class(tmp_path):
    cfg = config("lzn_cls_digits.py", *TINY_ENCODER, *TINY_DECODER, *QUICK)
    result = _train(cfg, tmp_path / "cls")
    assert np.isfinite(result["label_loss"]) and np.isfinite(result["recon_loss"])
    rows = result["eval"]
    assert set(rows["classification"]) >= {"test_accuracy_reference", "test_accuracy_batch", "train_accuracy_reference"}
    assert 0 <= rows["samples"]["accuracy"]["mean"] <= 1  # class-conditional samples, read by the digits classifier
    clf = unigen.from_pretrained(str(tmp_path / "cls"), component="classifier")
    assert clf.reference.shape == (cfg.train.batch_size, 8, 8, 1)
    from unigen.eval.probe import digits_pixels
    x, y = digits_pixels("test")
    pred = np.asarray(clf.predict(jnp.asarray(x[:64].reshape(-1, 8, 8, 1))))
    one_by_one = [int(clf.predict(jnp.asarray(x[i:i + 1].reshape(-1, 8, 8, 1)))[0]) for i in range(4)]
    assert list(pred[:4]) == one_by_one  # per image: the same prediction alone or in a batch


def test_representation_task_trains_on_two_views_and_probes(tmp_path):
    result = _train(config("lzn_repr_digits.py", *TINY_ENCODER, *QUICK), tmp_path / "repr")
    assert np.isfinite(result["alignment_loss"])
    probe = result["eval"]["linear_probe"]
    assert set(probe) == {f"{k}{w}" for k in ("anchors", "features", "tokens") for w in ("", "_at_init")} | {"raw_pixels"}
    assert probe["tokens"]["num_features"] == 16 * 16  # 4x4 patches of width 16
    assert probe["raw_pixels"]["test_acc"] > 0.95 and probe["anchors"]["num_features"] == 8
    assert not list(tmp_path.glob("repr/samples_*.png"))  # nothing to sample
