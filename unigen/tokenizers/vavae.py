"""VA-VAE: a KL autoencoder trained with vision-foundation alignment (Yao et al. 2025;
hustvl/LightningDiT `tokenizer/vavae.py`).

The network is the KL autoencoder of unigen/tokenizers/autoencoder_kl.py plus what training
needs beside it, as the reference keeps them in its checkpoint:
  vf_proj       z' = W z, a 1x1 conv (here a Dense over channels) from the latent to the frozen
                foundation model's width (`vf_dim`; 0 = none: a plain KL autoencoder);
  loss_logvar   the learnable scalar log-variance of the reconstruction NLL
                (|x - x_hat| / exp(s) + s, LDM's LPIPSWithDiscriminator.logvar).
As a tokenizer it is its autoencoder: `encode`, `decode`, `downsample_factor` and the config's
`latent_channels` / `scaling_factor` / `shift_factor` pass through, so a VA-VAE work dir is a
`config.data.latent_encoder` (unigen/tasks/latent_space.py) and
`from_pretrained(WORKDIR, component="autoencoder")` returns the bare AutoencoderKL.
The losses are in unigen/tasks/autoencoder.py and unigen/tokenizers/vf_loss.py.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from unigen.models.registry import InputSpec, ModelKind, register_model
from unigen.nn.layers import Dense, param
from unigen.tokenizers.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

RUNTIME_FIELDS = ("dtype", "remat")


@dataclasses.dataclass(frozen=True)
class VAVAEConfig:
    autoencoder: AutoencoderKLConfig = AutoencoderKLConfig()
    vf_dim: int = 0                 # the foundation features' width; 0 = no alignment projection
    logvar_init: float = 0.0        # the NLL's learnable log-variance starts here (LDM: 0.0)
    dtype: str = "float32"          # runtime fields, applied to the autoencoder
    remat: bool = False

    def __post_init__(self):
        ae = self.autoencoder
        if isinstance(ae, dict):  # from JSON
            from unigen.models.registry import get_model_kind
            ae = get_model_kind("autoencoder_kl").config_from_dict(ae)
        if not isinstance(ae, AutoencoderKLConfig):
            raise ValueError(f"VAVAEConfig.autoencoder: expected an AutoencoderKLConfig or a dict of its fields, "
                             f"got {type(ae).__name__}")
        object.__setattr__(self, "autoencoder", dataclasses.replace(ae, dtype=self.dtype, remat=self.remat))

    # the tokenizer's view (unigen.tokenizers.codec)
    latent_channels = property(lambda self: self.autoencoder.latent_channels)
    scaling_factor = property(lambda self: self.autoencoder.scaling_factor)
    shift_factor = property(lambda self: self.autoencoder.shift_factor)

    def validate(self) -> "VAVAEConfig":
        if isinstance(self.vf_dim, bool) or not isinstance(self.vf_dim, int) or self.vf_dim < 0:
            raise ValueError(f"VAVAEConfig.vf_dim={self.vf_dim!r}: must be an int >= 0 (the foundation "
                             f"features' width; 0 = no alignment)")
        self.autoencoder.validate()
        return self


class VAVAE(nnx.Module):
    """`model(x, rng=None)` -> (reconstruction, mean, logvar), as AutoencoderKL."""

    def __init__(self, cfg: VAVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg = cfg.validate()
        self.autoencoder = AutoencoderKL(cfg.autoencoder, rngs=rngs)
        self.vf_proj = (Dense(cfg.latent_channels, cfg.vf_dim, axes=(None, "embed"), rngs=rngs)
                        if cfg.vf_dim else None)
        self.loss_logvar = param(nnx.initializers.constant(cfg.logvar_init), (), (), rngs)

    @property
    def downsample_factor(self) -> int:
        return self.autoencoder.downsample_factor

    def encode(self, x):
        return self.autoencoder.encode(x)

    def decode(self, z):
        return self.autoencoder.decode(z)

    def project(self, z):
        """z (B, h, w, C) -> z' (B, h*w, vf_dim): the latent at the foundation model's width."""
        if self.vf_proj is None:
            raise ValueError("this VA-VAE has no alignment projection (VAVAEConfig.vf_dim=0)")
        return self.vf_proj(z.reshape(z.shape[0], -1, z.shape[-1]).astype(jnp.float32))

    def __call__(self, x, rng=None):
        return self.autoencoder(x, rng)

    def component(self, name: str, *, task_frozen=None):
        if name != "autoencoder":
            raise ValueError(f"component={name!r}: a VA-VAE has the component 'autoencoder'")
        return self.autoencoder


def from_section(m, spec: InputSpec) -> VAVAEConfig:
    """`config.model`: `autoencoder` (AutoencoderKLConfig fields; in/out channels and size come from
    the input `spec`), `vf_dim`, `logvar_init` and the runtime fields; dtype from `spec`."""
    allowed = {"kind", "autoencoder", "vf_dim", "logvar_init", *RUNTIME_FIELDS}
    unknown = sorted(set(m.keys()) - allowed)
    if unknown:
        raise ValueError(f"config.model.{unknown[0]}: not a VA-VAE field; known: {sorted(allowed)}")
    ae = dict(m.get("autoencoder") or {})
    for k in ("in_channels", "out_channels", "dtype", "remat"):
        if k in ae:
            raise ValueError(f"config.model.autoencoder.{k}: set by config.data / config.model, not here")
    ae.update(in_channels=spec.channels, out_channels=spec.channels, sample_size=spec.side)
    ae = {k: tuple(v) if isinstance(v, list) else v for k, v in ae.items()}
    try:
        autoencoder = AutoencoderKLConfig(**ae)
    except TypeError as e:
        raise ValueError(f"config.model.autoencoder: {e}") from None
    try:
        return VAVAEConfig(autoencoder=autoencoder, vf_dim=m.get("vf_dim", 0), logvar_init=m.get("logvar_init", 0.0),
                           dtype=spec.dtype, remat=m.get("remat", False)).validate()
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


VAVAE_KIND = register_model(ModelKind("vavae", VAVAE, VAVAEConfig, from_section=from_section,
                                      runtime_fields=RUNTIME_FIELDS))
