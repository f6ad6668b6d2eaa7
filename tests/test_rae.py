"""RAE: parity with diffusers `AutoencoderRAE` (random weights), its loading errors, the decoder
training task on a frozen LZN encoder, and RAE latents as a diffusion data set (deterministic
latent store) in quick mode."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.errors import ConfigError, WeightError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-4
TINY = dict(encoder_type="dinov2", encoder_hidden_size=64, encoder_patch_size=4, encoder_num_hidden_layers=2,
            decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=64, patch_size=2, encoder_input_size=16, num_channels=3, scaling_factor=1.3)


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def diffusers_rae(folder, stats="position", **overrides):
    """A tiny random AutoencoderRAE saved to `folder`; every weight perturbed so that none is
    at its initial value (LayerNorms, zero biases, the CLS token)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    config = dict(TINY, **overrides)
    c = config["encoder_hidden_size"]
    if stats == "position":  # the reference's stat.pt layout: (C, h, w)
        config.update(latents_mean=torch.randn(c, 4, 4).tolist(), latents_std=(torch.rand(c, 4, 4) + 0.5).tolist())
    elif stats == "channel":
        config.update(latents_mean=torch.randn(c, 1, 1).tolist(), latents_std=(torch.rand(c, 1, 1) + 0.5).tolist())
    model = diffusers.AutoencoderRAE(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


@pytest.mark.parametrize("stats", ["position", "channel", "none"])
def test_encode_decode_match_diffusers(tmp_path, stats):
    torch = pytest.importorskip("torch")
    ref = diffusers_rae(tmp_path / "rae", stats)
    x = torch.rand(2, 3, 20, 12, generator=torch.Generator().manual_seed(1))  # non-square: resized to 16x16
    with torch.no_grad():
        z = ref.encode(x).latent
        rec = ref.decode(z).sample
    ours = unigen.from_pretrained(str(tmp_path / "rae"))
    z_ours = ours.encode(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    rec_ours = ours.decode(jnp.asarray(z.permute(0, 2, 3, 1).numpy()))
    assert z_ours.shape == (2, 4, 4, 64) and rec_ours.shape == (2, 8, 8, 3)
    assert max_rel_err(z_ours, z.permute(0, 2, 3, 1).numpy()) < RTOL
    assert max_rel_err(rec_ours, rec.permute(0, 2, 3, 1).numpy()) < RTOL


def test_diffusers_folder_errors(tmp_path):
    pytest.importorskip("diffusers")
    diffusers_rae(tmp_path / "rae", "none")
    config_path = tmp_path / "rae" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, encoder_type="mae")))
    with pytest.raises(WeightError, match="encoder_type.*DINOv2 encoders only"):
        unigen.from_pretrained(str(tmp_path / "rae"))
    config_path.write_text(json.dumps(dict(config, decoder_hidden_size=48)))  # weights say 32
    with pytest.raises(WeightError, match="decoder"):
        unigen.from_pretrained(str(tmp_path / "rae"))


# ---------------------------------------------------------------- digits: decoder training on a frozen LZN encoder
def _tiny_lzn(path):
    """A random-weight LZN image encoder (8x8 grey -> 4x4 tokens of width 16) in unigen's format."""
    from unigen.lzn.encoder import ImageEncoderConfig
    from unigen.models import LZN, LZNConfig
    enc = ImageEncoderConfig(image_size=8, channels=1, patch_size=2, width=16, depth=1, num_heads=2, latent_dim=8)
    unigen.save_pretrained(LZN(LZNConfig(encoder=enc), rngs=nnx.Rngs(0)), str(path))
    return str(path), dict(image_size=8, channels=1, patch_size=2, width=16, depth=1, num_heads=2, latent_dim=8)


def rae_config(encoder_path, encoder_fields, **extra):
    from unigen.training.config import apply_override, load_config_file
    cfg = load_config_file(os.path.join(ROOT, "configs", "rae_digits.py"))
    overrides = {"rae.encoder": encoder_path, "model.encoder": encoder_fields, "model.decoder_hidden_size": 32, "model.decoder_num_layers": 1, "model.decoder_intermediate_size": 64,
                 "train.steps": 3, "train.batch_size": 16, "train.log_every": 1, "train.checkpoint_every": 3,
                 "train.warmup_steps": 1, "eval.batch_size": 128, "rae.stats_images": 5000}  # the whole split
    overrides.update(extra)
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def trained_rae(tmp_path_factory):
    from unigen.training.loop import train
    tmp = tmp_path_factory.mktemp("rae")
    enc_path, enc_fields = _tiny_lzn(tmp / "lzn")
    cfg = rae_config(enc_path, enc_fields)
    result = train(cfg, str(tmp / "run"), progress=False)
    return tmp, enc_path, enc_fields, result


def test_decoder_training_keeps_the_encoder_and_fills_statistics(trained_rae):
    tmp, enc_path, _, result = trained_rae
    ev = result["eval"]
    assert np.isfinite(ev["psnr_db"]) and ev["latent_shape"] == [4, 4, 16]
    assert os.path.exists(tmp / "run" / "reconstructions.png")
    rae = unigen.from_pretrained(str(tmp / "run"))
    lzn = unigen.from_pretrained(enc_path, component="encoder")
    np.testing.assert_array_equal(np.asarray(rae.encoder.patch_embed.kernel[...]),
                                  np.asarray(lzn.patch_embed.kernel[...]))  # frozen: the LZN's weights, untouched
    # the statistics normalise the training split's tokens: mean ~0, std ~1 per position and channel
    from unigen.tasks.arrays import split_arrays
    from unigen.training.config import load_config_file
    x, _ = split_arrays(load_config_file(os.path.join(ROOT, "configs", "rae_digits.py")), "train")
    z = np.asarray(rae.encode((jnp.asarray(x) + 1) / 2))
    assert np.abs(z.mean(0)).max() < 1e-3 and np.abs(z.std(0) - 1).max() < 1e-2


def test_bad_encoder_paths_and_configs(trained_rae, tmp_path):
    from unigen.training.loop import train
    tmp, enc_path, enc_fields = trained_rae[:3]
    bad = dict(enc_fields, width=32)
    with pytest.raises(ConfigError, match=r"config.model.encoder fields .*'width': 16"):
        train(rae_config(enc_path, bad), str(tmp_path / "a"),
              progress=False)
    with pytest.raises(ConfigError, match="config.rae.encoder"):
        train(rae_config(str(tmp_path / "nowhere"), enc_fields), str(tmp_path / "b"), progress=False)
    with pytest.raises(ConfigError, match="must freeze"):
        train(rae_config(enc_path, enc_fields, **{"train.frozen": ("^encoder/",)}), str(tmp_path / "c"),
              progress=False)


def test_ditdh_trains_on_rae_latents(trained_rae):
    """The RAE work dir as data.latent_encoder: a deterministic latent store (no logvar), 2 DiT^DH
    steps, samples decoded to 8x8 digits by the RAE."""
    from unigen.training.config import apply_override, load_config_file
    from unigen.training.loop import train
    tmp = trained_rae[0]
    cfg = load_config_file(os.path.join(ROOT, "configs", "ditdh_digits.py"))
    for key, value in {"data.latent_encoder": str(tmp / "run"), "data.latent_dir": str(tmp / "latents"),
                       "data.latent_channels": 16, "model.depth": 1, "model.hidden_size": 32, "model.num_heads": 2,
                       "model.head_depth": 1, "model.head_hidden_size": 32, "model.head_num_heads": 2,
                       "train.steps": 2, "train.batch_size": 16, "train.checkpoint_every": 2, "train.sample_every": 2,
                       "sample.steps": 2, "eval.at_end": False}.items():
        apply_override(cfg, key, value)
    train(cfg, str(tmp / "ditdh"), progress=False)
    meta = json.loads((tmp / "latents" / "latents.json").read_text())
    assert meta["posterior"] == "deterministic" and meta["latent_shape"] == [4, 4, 16]
    from unigen.data.latents import latent_dataset
    batch = next(iter(latent_dataset(str(tmp / "latents"), "train", batch_size=4, seed=0)))
    assert set(batch) == {"latent_mean", "label"}
    rae = unigen.from_pretrained(str(tmp / "run"))
    from unigen.tasks.arrays import split_arrays
    x, _ = split_arrays(cfg, "train", 4)
    # the stored latents are the RAE's encoding of the (unshuffled) split, in order
    from unigen.data.latents import DecodeLatent
    from array_record.python.array_record_module import ArrayRecordReader
    path = next(p for p in os.listdir(tmp / "latents") if p.endswith(".array_record"))
    reader = ArrayRecordReader(str(tmp / "latents" / path))
    stored = np.stack([DecodeLatent((4, 4, 16), True)(r)["latent_mean"] for r in reader.read(0, 4)])
    reader.close()
    np.testing.assert_allclose(stored, np.asarray(rae.encode((jnp.asarray(x) + 1) / 2)), rtol=1e-5, atol=1e-5)
    assert os.path.exists(tmp / "ditdh" / "samples_0000002.png")


def test_decoder_training_on_a_dinov2_folder(tmp_path):
    """The rae task with a transformers DINOv2 (registers) folder as the frozen encoder: its weights
    are copied in, the final LayerNorm's affine is dropped (RAE), the decoder trains."""
    transformers = pytest.importorskip("transformers")
    from unigen.training.loop import train
    config = transformers.Dinov2WithRegistersConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                    patch_size=2, image_size=8, num_channels=1,
                                                    num_register_tokens=4)
    torch = pytest.importorskip("torch")
    model = transformers.Dinov2WithRegistersModel(config)
    with torch.no_grad():  # a final LayerNorm that is not the identity, so dropping its affine shows
        model.layernorm.weight.uniform_(0.5, 1.5)
        model.layernorm.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(str(tmp_path / "dino"))
    fields = dict(hidden_size=16, num_layers=1, num_heads=2, patch_size=2, image_size=8, num_channels=1,
                  num_register_tokens=4, pos_antialias=True)
    cfg = rae_config(str(tmp_path / "dino"), fields, **{"model.encoder_type": "dinov2"})
    result = train(cfg, str(tmp_path / "run"), progress=False)
    assert result["eval"]["latent_shape"] == [4, 4, 16]
    rae = unigen.from_pretrained(str(tmp_path / "run"))
    dino = unigen.from_pretrained(str(tmp_path / "dino"))
    assert rae.encoder.norm.scale is None  # affine-free, as RAE
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
    lnw, lnb = np.asarray(dino.norm.scale[...]), np.asarray(dino.norm.bias[...])
    # RAE normalises pixels with (0.5, 0.5) here; its tokens are DINOv2's without the final affine
    ref = (np.asarray(dino.tokens((jnp.asarray(x) - 0.5) / 0.5)) - lnb) / lnw
    np.testing.assert_allclose(np.asarray(rae.encoder_tokens(jnp.asarray(x))), ref, rtol=1e-4, atol=1e-4)
