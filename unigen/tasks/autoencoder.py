"""The "autoencoder" task: train a KL tokenizer, with VA-VAE's vision-foundation alignment when
a frozen foundation encoder is given (model kind "vavae", unigen/tokenizers/vavae.py).

Loss per batch (LDM's LPIPSWithDiscriminator generator step as VA-VAE trains it, without the
perceptual and GAN terms; see below):
    L = NLL + kl_weight * KL + vf_weight * w * (L_mcos + L_mdms)
    NLL = sum_pixels |x - D(z)| / exp(s) + s, averaged over images (s the learnable log-variance),
          z = mean + exp(logvar / 2) eps, a posterior sample;
    KL  = 1/2 sum (mean^2 + exp(logvar) - 1 - logvar), averaged over images;
    w   = ||grad NLL|| / (||grad L_vf|| + 1e-4) on `encoder.conv_out` (adaptive=True; else 1).
The two gradients come from one vjp of the losses as functions of that one kernel, so the extra
cost is one backward pass through the decoder.

Options (`config.vavae`): `foundation` ('' = no alignment: a plain KL autoencoder; else a path
`unigen.from_pretrained` reads whose module has `tokens(x) -> (B, T, D)`: an LZN work dir gives
its image encoder, DINOv2 arrives with the RAE work), vf_weight 0.1, adaptive True, cos_margin
0.5, distmat_margin 0.25, kl_weight 1e-6 (the reference's values). The foundation's tokens are
resized to the latent grid when their grid differs (bilinear), and its input is the batch
resized to the size it reads. No LPIPS or GAN term: their weights (VGG LPIPS, a trained
discriminator) do not exist offline here, so this trains with the L1 NLL, KL and VF terms only.

Evaluation: test-split reconstruction PSNR (per image on [0, 1], averaged), the latents'
per-channel statistics, a linear probe on the flattened posterior means (digits: next to the
raw-pixel probe) and `reconstructions.png` (rows of originals over their reconstructions).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.diffusion.objective import per_example
from unigen.errors import ConfigError
from unigen.config_sections import config_section, read_section
from unigen.tasks.arrays import in_batches, split_arrays
from unigen.tasks.base import Task, register_task
from unigen.tasks.frozen import representation_encoder
from unigen.tokenizers.vf_loss import COS_MARGIN, DISTMAT_MARGIN, adaptive_weight, vf_losses


@config_section("vavae")
@dataclasses.dataclass(frozen=True)
class AutoencoderOptions:
    foundation: str = ""
    vf_weight: float = 0.1
    adaptive: bool = True
    cos_margin: float = COS_MARGIN
    distmat_margin: float = DISTMAT_MARGIN
    kl_weight: float = 1e-6

    @classmethod
    def from_config(cls, cfg) -> "AutoencoderOptions":
        opts = read_section(cls, cfg)
        for field in ("vf_weight", "kl_weight", "cos_margin", "distmat_margin"):
            value = getattr(opts, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"config.vavae.{field}={value!r}: must be a number >= 0")
        if not isinstance(opts.foundation, str):
            raise ConfigError(f"config.vavae.foundation={opts.foundation!r}: give a path or '' (no alignment)")
        return opts


def load_foundation(path: str):
    """The frozen encoder at `path`: a module with `tokens(x)` (an LZN work dir: its encoder)."""
    model = representation_encoder(path, "vavae.foundation")
    if not hasattr(model, "tokens"):
        raise ConfigError(f"config.vavae.foundation={path!r}: a {type(model).__name__} has no tokens(x); give an "
                          f"image encoder (an LZN work dir, or DINOv2)")
    return model


def _resize_grid(tokens, side_h, side_w):
    """(B, T, D) tokens on a square grid -> (B, side_h * side_w, D), bilinear."""
    b, t, d = tokens.shape
    s = int(round(t ** 0.5))
    if s * s != t:
        raise ConfigError(f"config.vavae.foundation: {t} tokens are not a square grid; cannot match them to the "
                          f"{side_h}x{side_w} latent")
    grid = jax.image.resize(tokens.reshape(b, s, s, d), (b, side_h, side_w, d), "bilinear")
    return grid.reshape(b, side_h * side_w, d)


LAST_LAYER = ("autoencoder", "encoder", "conv_out", "kernel")  # where VA-VAE takes the adaptive weight


@register_task("autoencoder")
class AutoencoderTask(Task):
    process = None  # no sampler: evaluation reconstructs

    def __init__(self, cfg, model_kind, model_cfg):
        super().__init__(cfg, model_kind, model_cfg)
        if model_kind.name != "vavae":
            raise ConfigError(f"config.task.name='autoencoder' trains model.kind='vavae' (the KL autoencoder with "
                              f"its loss parts); got {model_kind.name!r}")
        self.opts = AutoencoderOptions.from_config(cfg)
        d = cfg.data
        self.sample_shape = (d.image_size, d.image_size, d.channels)
        self.foundation = None
        if self.opts.foundation:
            self.foundation = load_foundation(self.opts.foundation)
            self._foundation_graph, _ = nnx.split(self.foundation)
            h = w = d.image_size // (2 ** (len(model_cfg.autoencoder.block_out_channels) - 1))
            probe = jax.eval_shape(lambda x: self._features(nnx.state(self.foundation), x),
                                   jax.ShapeDtypeStruct((1, d.image_size, d.image_size, d.channels), jnp.float32))
            if model_cfg.vf_dim != probe.shape[-1]:
                raise ConfigError(f"config.model.vf_dim={model_cfg.vf_dim}: the foundation encoder "
                                  f"{self.opts.foundation} gives {probe.shape[-1]}-wide tokens; set it to "
                                  f"{probe.shape[-1]}")
            self.latent_grid = (h, w)
        elif model_cfg.vf_dim:
            raise ConfigError(f"config.model.vf_dim={model_cfg.vf_dim}: no config.vavae.foundation to align with; "
                              f"set vf_dim=0 or give a foundation encoder")

    def _features(self, state, x):
        """The frozen foundation tokens of images x in [-1, 1], on the latent grid."""
        enc = nnx.merge(self._foundation_graph, state)
        size = getattr(enc.cfg, "image_size", x.shape[1])
        if x.shape[1] != size:
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bilinear")
        tokens = enc.tokens(x)
        grid = getattr(self, "latent_grid", None)  # unset while the constructor probes the shape
        if grid is not None and tokens.shape[1] != grid[0] * grid[1]:
            tokens = _resize_grid(tokens, *grid)
        return jax.lax.stop_gradient(tokens.astype(jnp.float32))

    # ---- data and frozen parts ----------------------------------------------------------------
    def dataset(self, split, *, batch_size, seed, shard, shards):
        from unigen.data.pipeline import make_dataset
        d = self.cfg.data
        return make_dataset(d.name, split, batch_size=batch_size, image_size=d.image_size, seed=seed,
                            process_index=shard, process_count=shards, data_dir=d.data_dir or None)

    def frozen(self, seed):
        return {} if self.foundation is None else {"foundation": nnx.state(self.foundation)}

    # ---- loss -----------------------------------------------------------------------------------
    def loss(self, model, batch, rng, frozen):
        x = batch["image"]
        eps = per_example(rng, x.shape[0],
                          lambda k: jax.random.normal(k, model.autoencoder.latent_shape(*x.shape[1:3]), jnp.float32))
        features = self._features(frozen["foundation"], x) if self.foundation is not None else None
        graphdef, state = nnx.split(model)
        flat = dict(nnx.to_flat_state(state))
        kernel = flat[LAST_LAYER][...]

        def parts(w):  # the losses as functions of the encoder's last kernel (the rest closed over)
            m = nnx.merge(graphdef, nnx.from_flat_state({**flat, LAST_LAYER: flat[LAST_LAYER].replace(w)}))
            return self.loss_parts(m, x, eps, features)

        (nll, vf), pull, aux = jax.vjp(parts, kernel, has_aux=True)
        total = nll + self.opts.kl_weight * aux["kl"]
        metrics = dict(aux, nll=nll)
        if features is not None:
            if self.opts.adaptive:
                (g_nll,) = pull((jnp.ones_like(nll), jnp.zeros_like(vf)))
                (g_vf,) = pull((jnp.zeros_like(nll), jnp.ones_like(vf)))
                weight = adaptive_weight(g_nll, g_vf)
            else:
                weight = jnp.ones((), jnp.float32)
            total = total + self.opts.vf_weight * weight * vf
            metrics.update(vf=vf, vf_weight=weight)
        return total, metrics

    def loss_parts(self, model, x, eps, features):
        """((NLL, L_vf), metrics) for images x, posterior noise eps and foundation tokens
        (None: no alignment, L_vf = 0)."""
        mean, logvar = model.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * eps.astype(mean.dtype)
        rec = model.decode(z).astype(jnp.float32)
        s = model.loss_logvar[...]
        l1 = jnp.abs(x.astype(jnp.float32) - rec)
        nll = jnp.mean(jnp.sum(l1 / jnp.exp(s) + s, axis=(1, 2, 3)))
        kl = jnp.mean(0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
        aux = dict(kl=kl, l1=jnp.mean(l1), logvar=s, latent_std=jnp.std(mean))
        if features is None:
            return (nll, jnp.zeros((), jnp.float32)), aux
        mcos, mdms = vf_losses(model.project(z), features, cos_margin=self.opts.cos_margin,
                               distmat_margin=self.opts.distmat_margin)
        return (nll, mcos + mdms), dict(aux, mcos=mcos, mdms=mdms)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, generate, workdir, model=None):
        if model is None:
            return None
        from unigen.images import save_grid
        report = tokenizer_report(model, self.cfg, batch_size=self.cfg.eval.get("batch_size", 256))
        grid = report.pop("_grid")
        save_grid(os.path.join(workdir, "reconstructions.png"), grid, rows=4)
        print(format_report(report), flush=True)
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(report, f, indent=2)
        return report


def psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of images in [-1, 1], measured on [0, 1] (peak 1)."""
    mse = np.mean(np.square((np.clip(x, -1, 1) - np.clip(y, -1, 1)) / 2.0), axis=tuple(range(1, x.ndim)))
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def _encoder_of(model):
    return getattr(model, "encode_latents", None) or model.encode


def _decoder_of(model):
    return getattr(model, "decode_latents", None) or model.decode


def tokenizer_report(model, cfg, *, batch_size: int = 256, limit: int = 10_000) -> dict:
    """Reconstruction PSNR and latent statistics on the test split; a linear probe on the
    flattened posterior means (train -> test) when the data set has labels."""
    graphdef, state = nnx.split(model)
    # A deterministic tokenizer (RAE) has encode_latents / decode_latents on [-1, 1] images and
    # returns no log-variance.
    encode = jax.jit(lambda s, x: _encoder_of(nnx.merge(graphdef, s))(x))
    decode = jax.jit(lambda s, z: _decoder_of(nnx.merge(graphdef, s))(z))
    x_test, y_test = split_arrays(cfg, "test", limit)
    mean, logvar = in_batches(lambda x: encode(state, x), x_test, batch_size)
    if logvar is None:
        logvar = np.full(mean.shape, -np.inf, np.float32)
    rec = np.clip(in_batches(lambda z: decode(state, z), mean, batch_size), -1, 1)
    per_image = psnr(x_test, rec)
    flat = mean.reshape(-1, mean.shape[-1])
    out = {"test_images": int(len(x_test)), "psnr_db": float(per_image.mean()),
           "psnr_db_p10": float(np.percentile(per_image, 10)),
           "psnr_db_of_mean_mse": float(10 * np.log10(1.0 / np.mean(np.square((x_test - rec) / 2.0)))),
           "latent_shape": list(mean.shape[1:]), "latent_channel_mean": flat.mean(0).tolist(),
           "latent_channel_std": flat.std(0).tolist(), "posterior_std_mean": float(np.exp(0.5 * logvar).mean())}
    if cfg.data.num_classes:
        from unigen.eval.probe import linear_probe
        x_train, y_train = split_arrays(cfg, "train", limit)
        train_mean, _ = in_batches(lambda x: encode(state, x), x_train, batch_size)
        out["linear_probe_latents"] = linear_probe(train_mean.reshape(len(x_train), -1), y_train,
                                                   mean.reshape(len(x_test), -1), y_test)
        out["linear_probe_latents"].pop("selection", None)
        if cfg.data.name == "digits":
            from unigen.eval.probe import raw_pixel_baseline
            out["linear_probe_pixels"] = raw_pixel_baseline()
            out["linear_probe_pixels"].pop("selection", None)
    k = min(16, len(x_test))
    out["_grid"] = np.concatenate([x_test[:k // 2], rec[:k // 2], x_test[k // 2:k], rec[k // 2:k]])
    return out


def format_report(r: dict) -> str:
    text = (f"tokenizer: test PSNR {r['psnr_db']:.2f} dB (per image; p10 {r['psnr_db_p10']:.2f}), latents "
            f"{'x'.join(map(str, r['latent_shape']))}")
    if "linear_probe_latents" in r:
        text += f"; linear probe on latents {r['linear_probe_latents']['test_acc']:.4f}"
    if "linear_probe_pixels" in r:
        text += f" (raw pixels {r['linear_probe_pixels']['test_acc']:.4f})"
    return text
