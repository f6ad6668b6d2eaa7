"""SANA block: parity with diffusers (linear-attention processor, GLUMBConv, and the
whole SanaTransformerBlock) under the same random weights, float32, rel err <= 1e-4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0  # noqa: E402
from diffusers.models.transformers.sana_transformer import GLUMBConv, SanaTransformerBlock  # noqa: E402

from unigen.models.sana_block import MixFFN, SanaBlock, SanaLinearAttention  # noqa: E402

D, HEADS, GRID = 32, 4, (4, 6)
T = GRID[0] * GRID[1]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def t2j(x):
    return jnp.asarray(x.detach().numpy())


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def load_linear(dense, lin):
    """torch Linear (out, in) -> unigen Dense kernel in_dims + out_dims."""
    w = t2j(lin.weight).T
    dense.kernel[...] = w.reshape(dense.kernel.shape)
    if lin.bias is not None:
        dense.bias[...] = t2j(lin.bias).reshape(dense.bias.shape)


def load_attention(ours: SanaLinearAttention, theirs: Attention):
    load_linear(ours.to_q, theirs.to_q)
    load_linear(ours.to_k, theirs.to_k)
    load_linear(ours.to_v, theirs.to_v)
    load_linear(ours.to_out, theirs.to_out[0])


def load_ffn(ours: MixFFN, theirs: GLUMBConv):
    ours.inverted.kernel[...] = t2j(theirs.conv_inverted.weight)[:, :, 0, 0].T
    ours.inverted.bias[...] = t2j(theirs.conv_inverted.bias)
    ours.depth_kernel[...] = t2j(theirs.conv_depth.weight)[:, 0].transpose(1, 2, 0)
    ours.depth_bias[...] = t2j(theirs.conv_depth.bias)
    ours.point.kernel[...] = t2j(theirs.conv_point.weight)[:, :, 0, 0].T


def tokens(seed, b=2):
    return np.random.default_rng(seed).normal(size=(b, T, D)).astype(np.float32)


def test_linear_attention_matches_diffusers_processor():
    theirs = randomize(Attention(query_dim=D, heads=HEADS, dim_head=D // HEADS, bias=True,
                                 processor=SanaLinearAttnProcessor2_0()), 0).eval()
    ours = SanaLinearAttention(D, HEADS, rngs=nnx.Rngs(0))
    load_attention(ours, theirs)
    x = tokens(1)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    for impl in ("xla", "pallas"):
        ours.options["impl"] = impl
        assert rel_err(ours(jnp.asarray(x)), want) <= 1e-4, impl


def test_mix_ffn_matches_diffusers_glumbconv():
    theirs = randomize(GLUMBConv(D, D, 2.5, norm_type=None, residual_connection=False), 1).eval()
    ours = MixFFN(D, int(2.5 * D), rngs=nnx.Rngs(0))
    load_ffn(ours, theirs)
    x = tokens(2)
    with torch.no_grad():
        nchw = torch.from_numpy(x).unflatten(1, GRID).permute(0, 3, 1, 2)
        want = theirs(nchw).flatten(2, 3).permute(0, 2, 1).numpy()
    assert rel_err(ours(jnp.asarray(x), GRID), want) <= 1e-4


def test_block_matches_diffusers_sana_transformer_block():
    theirs = SanaTransformerBlock(dim=D, num_attention_heads=HEADS, attention_head_dim=D // HEADS,
                                  cross_attention_dim=D, num_cross_attention_heads=2,
                                  cross_attention_head_dim=16, mlp_ratio=2.5)
    theirs.attn2 = None  # self-attention + Mix-FFN only, like our block
    randomize(theirs, 3).eval()
    with torch.no_grad():
        theirs.scale_shift_table.zero_()
    ours = SanaBlock(D, HEADS, rngs=nnx.Rngs(0), mlp_ratio=2.5)
    load_attention(ours.attn, theirs.attn1)
    load_ffn(ours.ffn, theirs.ff)
    rng = np.random.default_rng(4)
    ours.ada.kernel[...] = jnp.asarray(rng.normal(size=(D, 6, D)) * 0.2, jnp.float32)
    ours.ada.bias[...] = jnp.asarray(rng.normal(size=(6, D)) * 0.2, jnp.float32)
    x, c = tokens(5), rng.normal(size=(2, D)).astype(np.float32)
    mods = np.asarray(ours.modulations(jnp.asarray(c))).reshape(2, 6 * D)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x), timestep=torch.from_numpy(mods.copy()),
                      height=GRID[0], width=GRID[1]).numpy()
    assert rel_err(ours(jnp.asarray(x), jnp.asarray(c), GRID), want) <= 1e-4


def test_block_is_identity_at_init_trains_and_carries_axes():
    block = SanaBlock(D, HEADS, rngs=nnx.Rngs(0))
    x, c = jnp.asarray(tokens(6)), jnp.ones((2, D))
    np.testing.assert_array_equal(np.asarray(block(x, c, GRID)), np.asarray(x))  # adaLN-Zero
    graphdef, state = nnx.split(block)

    def loss(state):
        return jnp.mean(nnx.merge(graphdef, state)(x, c, GRID) ** 2)

    grads = jax.jit(jax.grad(loss))(state)
    assert float(jnp.abs(grads["ada"]["kernel"][...]).max()) > 0
    axes = {tuple(str(p) for p in path): getattr(v, "logical_axes", None)
            for path, v in nnx.iter_graph(block) if isinstance(v, nnx.Param)}
    assert all(a is not None for a in axes.values()), axes
    assert axes[("ffn", "depth_kernel")] == (None, None, "mlp")


def test_block_causal_chunks_do_not_see_the_future():
    block = SanaBlock(D, HEADS, rngs=nnx.Rngs(0), chunk_size=12)
    attn = block.attn
    x = jnp.asarray(tokens(7))
    y = x.at[:, 12:].add(1.0)  # change only the second chunk
    a, b = attn(x), attn(y)
    np.testing.assert_allclose(np.asarray(a[:, :12]), np.asarray(b[:, :12]), rtol=1e-6)
    assert not np.allclose(np.asarray(a[:, 12:]), np.asarray(b[:, 12:]))
    with pytest.raises(ValueError, match="grid"):
        block(x, jnp.ones((2, D)), (5, 5))
