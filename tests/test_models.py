"""Model configs and inputs checked without any reference framework (no torch needed)."""

import jax.numpy as jnp
import pytest


def test_unknown_model_name():
    from unigen.models.dit import dit_config
    with pytest.raises(ValueError, match="unknown model name 'DiT-XXL/2'"):
        dit_config("DiT-XXL/2")


def test_image_size_not_divisible_by_patch():
    from unigen.models.dit import dit_config
    with pytest.raises(ValueError, match="input_size=30.*patch_size=4"):
        dit_config("DiT-S/4", input_size=30)
    from flax import nnx
    from unigen.models.dit import DiT
    model = DiT(dit_config("DiT-S/2", input_size=8, depth=1, hidden_size=32, num_heads=2, num_classes=10),
                rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not divisible by patch size 2"):
        model(jnp.zeros((1, 7, 7, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
