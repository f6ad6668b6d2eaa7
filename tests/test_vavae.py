"""VA-VAE: the vision-foundation alignment loss against the reference's formula (torch), the
adaptive weight against separately taken gradients, and the tokenizer -> latent diffusion path
on digits in quick mode (a VA-VAE work dir as `data.latent_encoder`)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch_vf(z_proj, features, m1, m2):
    """hustvl/LightningDiT's combined_v3 VF loss, restated with torch ops."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z, f = torch.tensor(z_proj), torch.tensor(features)
    mcos = F.relu(1 - m1 - F.cosine_similarity(z, f, dim=-1)).mean()
    zn, fn = F.normalize(z, dim=-1), F.normalize(f, dim=-1)
    mdms = F.relu((zn @ zn.transpose(1, 2) - fn @ fn.transpose(1, 2)).abs() - m2).mean()
    return float(mcos), float(mdms)


def test_vf_losses_match_the_reference_formula():
    from unigen.tokenizers.vf_loss import vf_losses
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 16, 24)).astype(np.float32)
    z = (0.7 * f + rng.normal(size=f.shape)).astype(np.float32)  # partly aligned: both hinges active
    for m1, m2 in ((0.5, 0.25), (0.0, 0.0)):
        mcos, mdms = vf_losses(jnp.asarray(z), jnp.asarray(f), cos_margin=m1, distmat_margin=m2)
        ref = _torch_vf(z, f, m1, m2)
        np.testing.assert_allclose([float(mcos), float(mdms)], ref, rtol=1e-5, atol=1e-6)
        assert ref[0] > 0 and ref[1] > 0
    with pytest.raises(ValueError, match="must match"):
        vf_losses(jnp.zeros((1, 4, 8)), jnp.zeros((1, 5, 8)))
    grad = jax.grad(lambda z: sum(vf_losses(z, jnp.asarray(f))))(jnp.zeros(f.shape))  # zero latents: finite
    assert bool(jnp.all(jnp.isfinite(grad)))


def _tiny_foundation(path):
    """A random-weight LZN image encoder (8x8 grey -> 4x4 tokens of width 16) in unigen's format."""
    import unigen
    from unigen.lzn.encoder import ImageEncoderConfig
    from unigen.models import LZN, LZNConfig
    enc = ImageEncoderConfig(image_size=8, channels=1, patch_size=2, width=16, depth=1, num_heads=2, latent_dim=8)
    unigen.save_pretrained(LZN(LZNConfig(encoder=enc), rngs=nnx.Rngs(0)), str(path))
    return str(path)


def _vavae_config(foundation, **extra):
    from unigen.training.config import apply_override, load_config_file
    cfg = load_config_file(os.path.join(ROOT, "configs", "vavae_digits.py"))
    overrides = {"vavae.foundation": foundation, "model.vf_dim": 16 if foundation else 0,
                 "model.autoencoder.block_out_channels": (8, 16), "model.autoencoder.norm_num_groups": 4,
                 "train.steps": 3, "train.batch_size": 16, "train.log_every": 1, "train.checkpoint_every": 3,
                 "train.warmup_steps": 1, "eval.batch_size": 128}
    overrides.update(extra)
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


def test_adaptive_weight_is_the_gradient_norm_ratio_on_the_encoder_last_layer(tmp_path):
    from unigen.training.build import validate
    cfg = _vavae_config(_tiny_foundation(tmp_path / "found"))
    run = validate(cfg)
    task, model = run.task, run.model_kind.build(run.model_cfg, seed=1)
    frozen = task.frozen(0)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    total, metrics = task.loss(model, {"image": x, "label": jnp.zeros(4, jnp.int32)}, keys, frozen)

    eps = jax.vmap(lambda k: jax.random.normal(k, (4, 4, 4)))(keys)  # the loss's posterior noise
    features = task._features(frozen["foundation"], x)
    grads = [nnx.grad(lambda m, i=i: task.loss_parts(m, x, eps, features)[0][i])(model)
             .autoencoder.encoder.conv_out.kernel[...] for i in (0, 1)]
    ratio = np.linalg.norm(grads[0]) / (np.linalg.norm(grads[1]) + 1e-4)
    np.testing.assert_allclose(float(metrics["vf_weight"]), ratio, rtol=1e-4)
    (nll, vf), aux = task.loss_parts(model, x, eps, features)
    np.testing.assert_allclose(float(total), float(nll + 1e-6 * aux["kl"] + 0.1 * ratio * vf), rtol=1e-5)


def test_config_errors(tmp_path):
    from unigen.errors import ConfigError
    from unigen.training.build import validate
    found = _tiny_foundation(tmp_path / "found")
    with pytest.raises(ConfigError, match=r"model.vf_dim=64: the foundation encoder .* gives 16-wide tokens"):
        validate(_vavae_config(found, **{"model.vf_dim": 64}))
    with pytest.raises(ConfigError, match="model.vf_dim=16: no config.vavae.foundation"):
        validate(_vavae_config("", **{"model.vf_dim": 16}))
    with pytest.raises(ConfigError, match="vavae.kl_weight"):
        validate(_vavae_config(found, **{"vavae.kl_weight": -1.0}))


def test_tokenizer_then_latent_diffusion_on_digits_quick(tmp_path):
    """configs/vavae_digits.py then configs/lightningdit_digits.py on its latents, in quick mode."""
    import unigen
    from unigen.infer.sample import main as sample_main
    from unigen.training.config import apply_override, load_config_file
    from unigen.training.loop import train
    tok = str(tmp_path / "vavae")
    result = train(_vavae_config(_tiny_foundation(tmp_path / "found")), tok, progress=False)
    report = json.load(open(os.path.join(tok, "eval.json")))
    assert report["latent_shape"] == [4, 4, 4] and np.isfinite(report["psnr_db"])
    assert 0.0 < report["linear_probe_latents"]["test_acc"] <= 1.0 and "vf_weight" in result
    assert os.path.exists(os.path.join(tok, "reconstructions.png"))
    assert unigen.from_pretrained(tok, component="autoencoder").cfg.latent_channels == 4

    cfg = load_config_file(os.path.join(ROOT, "configs", "lightningdit_digits.py"))
    for key, value in {"data.latent_encoder": tok, "data.latent_dir": str(tmp_path / "store"),
                       "model.depth": 1, "model.hidden_size": 32, "model.num_heads": 2, "train.steps": 2,
                       "train.batch_size": 16, "train.checkpoint_every": 2, "train.sample_every": 2,
                       "sample.steps": 2, "eval.at_end": False}.items():
        apply_override(cfg, key, value)
    run_dir = str(tmp_path / "ldit")
    assert train(cfg, run_dir, progress=False)["step"] == 2
    out = tmp_path / "samples.npz"
    assert sample_main(["--workdir", run_dir, "--out", str(out), "--per-class", "2", "--classes", "3,4"]) == 0
    images = np.load(out)["images"]
    assert images.shape == (4, 8, 8, 1) and np.all(np.abs(images) <= 1.0)  # decoded at the data's 8x8
