"""A model kind and a task defined outside `unigen/` (test_plugins.py): a tiny MLP denoiser
conditioned on a named vector `vec`, and a task that builds that vector from the digits' labels.
The task also offers infer/sample.py a request of its own, `--mode mix --mix 3,7 --weight 0.25`.
Imported through `config.imports`; nothing in unigen names it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.models import Condition, InputSpec, ModelKind, register_model
from unigen.nn import Dense, timestep_embedding
from unigen.cli_args import class_list
from unigen.errors import ConfigError
from unigen.tasks import DiffusionTask, register_task
from unigen.tasks.requests import NUM, Argument, Drawn, SampleRequest


@dataclasses.dataclass(frozen=True)
class VecNetConfig:
    image_size: int = 8
    channels: int = 1
    vec_dim: int = 10
    hidden: int = 64
    scale: float = 1.0  # a runtime field, to check overrides


class VecNet(nnx.Module):
    """x, t, vec -> velocity: an MLP over the flattened image, time features and the vector."""

    def __init__(self, cfg: VecNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.image_size ** 2 * cfg.channels
        self.inp = Dense(d + 32 + cfg.vec_dim, cfg.hidden, axes=(None, "mlp"), rngs=rngs)
        self.mid = Dense(cfg.hidden, cfg.hidden, axes=("mlp", None), rngs=rngs)
        self.out = Dense(cfg.hidden, d, axes=(None, None), rngs=rngs)
        self.buffer = nnx.Variable(jnp.ones(()))  # a non-Param variable: travels frozen

    def __call__(self, x, t, vec):
        b = x.shape[0]
        h = jnp.concatenate([x.reshape(b, -1), timestep_embedding(t, 32), vec.astype(x.dtype)], axis=-1)
        h = jax.nn.silu(self.inp(h))
        h = jax.nn.silu(self.mid(h)) * self.buffer[...]
        return self.out(h).reshape(x.shape) * self.cfg.scale


def from_section(model_section, spec: InputSpec) -> VecNetConfig:
    """config.model's `hidden`; the input's side and channels and the classes (the vector's width) from `spec`."""
    return VecNetConfig(image_size=spec.side, channels=spec.channels, vec_dim=spec.num_classes,
                        hidden=model_section.hidden)


register_model(ModelKind("vecnet", VecNet, VecNetConfig, from_section=from_section,
                         conditions=lambda cfg: {"vec": Condition(null=0.0, dropout=0.1)},
                         runtime_fields=("scale",)))


def one_hot(labels, n=10):
    return np.eye(n, dtype=np.float32)[np.asarray(labels)]


@register_task("digits_vec")
class DigitsVecTask(DiffusionTask):
    """Rectified flow on the digits, conditioned on the one-hot label as a vector."""

    def dataset(self, split, *, batch_size, seed, shard, shards):
        base = super().dataset(split, batch_size=batch_size, seed=seed, shard=shard, shards=shards)
        return base.map(lambda b: {"image": b["image"], "vec": one_hot(b["label"])})

    def conditions_for_labels(self, labels):
        return {"vec": one_hot(labels)}

    # A sample request of this task: infer/sample.py offers its flags for this work dir only.
    MIX = Argument("--mix", "two class ids a,b: samples of the blend of their one-hot vectors", class_list,
                   noun="two classes")
    WEIGHT = Argument("--weight", "the weight of the first --mix class", float, default=0.5)

    def sample_requests(self):
        mix = SampleRequest("mix", "samples of two classes' blended vectors", self.draw_mix, (self.MIX, self.WEIGHT, NUM),
                            required=("mix",), selected_by="mix")
        return (*super().sample_requests(), mix)

    def draw_mix(self, given, generate, seed):
        if len(given["mix"]) != 2:
            raise ConfigError(f"--mix {given['mix']}: give two class ids, e.g. --mix 3,7")
        (a, b), w = given["mix"], given["weight"]
        vec = np.repeat(w * one_hot([a]) + (1.0 - w) * one_hot([b]), given["num"], axis=0)
        images = generate({"vec": vec}, len(vec), seed, label="mix")
        return Drawn(dict(images=images.astype(np.float32), vec=vec), len(images), images, 1,
                     [f"{w:g} x {a} + {1 - w:g} x {b}"])
