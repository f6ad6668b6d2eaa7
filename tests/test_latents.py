"""Training on a tokenizer's latents: the latent store, the ImageNet config end to end on a tiny
generated imagenet2012 with a random-weight diffusers VAE, and the errors before compiling."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fake_imagenet import write_fake_imagenet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _diffusers_vae(path, seed, latent_channels=4):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                                  layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                                  sample_size=32)
    vae.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_fake_imagenet(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return _diffusers_vae(tmp_path_factory.mktemp("vae") / "sd-vae", seed=0)


def _imagenet_config(data_dir, vae_path, store, **extra):
    from unigen.training.config import apply_override, load_config_file
    cfg = load_config_file(os.path.join(ROOT, "configs", "dit_xl2_imagenet256.py"))
    overrides = {"data.data_dir": data_dir, "data.image_size": 32, "data.latent_encoder": vae_path,
                 "data.latent_dir": store, "model.depth": 1, "model.hidden_size": 32, "model.num_heads": 2,
                 "train.batch_size": 4, "train.steps": 2, "train.checkpoint_every": 2, "train.sample_every": 2,
                 "train.log_every": 1, "sample.steps": 3, "sample.per_class": 1, "mesh.fsdp": 1,
                 "train.compute_dtype": "float32"}
    overrides.update(extra)
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


def test_imagenet_config_encodes_trains_samples_and_decodes(imagenet, vae, tmp_path):
    from PIL import Image

    from unigen.data.latents import read_meta
    from unigen.infer.sample import main as sample_main
    from unigen.training.loop import train
    store, workdir = str(tmp_path / "store"), str(tmp_path / "run")
    cfg = _imagenet_config(imagenet, vae, store)
    result = train(cfg, workdir, progress=False)
    assert result["step"] == 2 and np.isfinite(result["loss"])
    meta = read_meta(store)
    assert meta["latent_shape"] == [4, 4, 4] and meta["splits"]["train"]["records"] == 24
    assert len(meta["splits"]["train"]["channel_std"]) == 4
    grid = Image.open(os.path.join(workdir, "samples_0000002.png"))  # decoded: 16 classes x 1, 32x32 RGB
    assert grid.mode == "RGB" and grid.size[1] > 16 * 32
    out = tmp_path / "s.npz"
    assert sample_main(["--workdir", workdir, "--out", str(out), "--per-class", "2", "--classes", "1,7",
                        "--steps", "3"]) == 0
    images = np.load(out)["images"]
    assert images.shape == (4, 32, 32, 3) and np.all(np.abs(images) <= 1.0)


def test_latent_store_holds_the_encoders_moments_and_statistics(imagenet, vae, tmp_path):
    from unigen.data.latents import encode_dataset, latent_dataset
    from unigen.data.pipeline import Preprocess
    from unigen.data.tfds_source import data_source
    from unigen.tasks.frozen import latent_codec
    codec = latent_codec(vae)
    meta = encode_dataset(codec, "imagenet2012", "validation", image_size=32, out_dir=str(tmp_path),
                          data_dir=imagenet, batch_size=3, progress=False)  # 8 records: a padded last batch
    source = data_source("imagenet2012", "validation", imagenet)
    images = np.stack([Preprocess(32)(source[i])["image"] for i in range(len(source))])
    labels = np.asarray([source[i]["label"] for i in range(len(source))])
    mean, logvar = codec.encode(images)
    batch = next(iter(latent_dataset(str(tmp_path), "validation", batch_size=8, seed=0, shuffle=False)))
    np.testing.assert_allclose(batch["latent_mean"], mean, atol=1e-5)
    np.testing.assert_allclose(batch["latent_logvar"], logvar, atol=1e-5)
    np.testing.assert_array_equal(batch["label"], labels)
    info = meta["splits"]["validation"]
    z_mean = mean.reshape(-1, 4).mean(0)
    z_var = (np.square(mean) + np.exp(logvar)).reshape(-1, 4).mean(0) - z_mean ** 2  # of fresh samples
    np.testing.assert_allclose(info["channel_mean"], z_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(info["channel_std"], np.sqrt(z_var), rtol=1e-4)
    assert meta["encoder"]["fingerprint"] == codec.fingerprint


def test_latents_of_another_encoder_are_refused_before_compiling(imagenet, vae, tmp_path):
    from unigen.data.latents import encode_dataset
    from unigen.errors import ConfigError
    from unigen.tasks.frozen import latent_codec
    from unigen.training.build import validate
    store = str(tmp_path / "store")
    other = _diffusers_vae(tmp_path / "other-vae", seed=1)
    encode_dataset(latent_codec(vae), "imagenet2012", "validation", image_size=32, out_dir=store,
                   data_dir=imagenet, progress=False)
    validate(_imagenet_config(imagenet, vae, store))  # its own encoder: fine
    with pytest.raises(ConfigError, match="different encoder.*latent_encoder"):
        validate(_imagenet_config(imagenet, other, store))


def test_vae_whose_channels_disagree_with_the_config_is_refused(imagenet, vae, tmp_path):
    from unigen.errors import ConfigError
    from unigen.training.build import validate
    with pytest.raises(ConfigError, match=r"data.latent_channels=16: the tokenizer .* has 4"):
        validate(_imagenet_config(imagenet, vae, str(tmp_path / "s"), **{"data.latent_channels": 16}))
    with pytest.raises(ConfigError, match=r"data.latent_downsample=4: the tokenizer .* has 8"):
        validate(_imagenet_config(imagenet, vae, str(tmp_path / "s"), **{"data.latent_downsample": 4}))
    with pytest.raises(ConfigError, match="no such file or folder"):
        validate(_imagenet_config(imagenet, str(tmp_path / "missing"), str(tmp_path / "s")))
    meta = json.load(open(os.path.join(vae, "config.json")))
    assert meta["latent_channels"] == 4
