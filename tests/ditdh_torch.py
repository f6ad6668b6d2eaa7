"""A small PyTorch DiT^DH: the oracle for unigen's DiTDH (unigen/models/ddt.py).

Written for these tests from the reference (bytetriper/RAE: src/stage2/models/DDT.py `DiTwDDTHead`,
src/stage2/models/model_utils.py), in our own words, torch only (no timm / einops). The LightningDiT
pieces the reference shares with hustvl/LightningDiT (RMSNorm, EVA-02 2-D RoPE, qk-normed attention,
SwiGLU, the sin-cos table) come from tests/lightningdit_torch.py; the DDT parts are here: the Gaussian
Fourier time embedding, per-segment modulation (DDTModulate / DDTGate, a condition with fewer tokens
than x is repeated with repeat_interleave), the trunk / projector / head forward and the final layer.
Parameter names follow the reference's state dict (`blocks.N.attn.qkv.weight` over trunk and head
together, `t_embedder.W`, `s_projector.weight`, `final_layer.norm_final.weight`, ...), so the weights
map onto unigen the way a released checkpoint would. Tensors are NCHW as in the reference.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightningdit_torch import Attention, GridRope, Mlp, RMSNorm, SwiGLUFFN, sincos_table


def _repeat_tokens(c, n_tokens):
    """A (B, L, D) condition over n_tokens = r * L tokens: each of its L rows repeated r times in a row."""
    if n_tokens % c.shape[1]:
        raise ValueError(f"{n_tokens} tokens are not a multiple of the condition's {c.shape[1]}")
    r = n_tokens // c.shape[1]
    return c if r == 1 else c.repeat_interleave(r, dim=1)


def seg_modulate(x, shift, scale):
    scale = _repeat_tokens(scale, x.shape[1])
    out = x * (1 + scale)
    return out if shift is None else out + _repeat_tokens(shift, x.shape[1])


def seg_gate(x, g):
    return x * _repeat_tokens(g, x.shape[1])


def _norm(dim, use_rmsnorm):
    return RMSNorm(dim) if use_rmsnorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class DDTBlock(nn.Module):
    """LightningDDTBlock: a LightningDiT block whose condition may be (B, D) or per token (B, L, D)."""

    def __init__(self, dim, heads, mlp_ratio=4.0, use_qknorm=False, use_swiglu=True, use_rmsnorm=True,
                 wo_shift=False):
        super().__init__()
        self.norm1, self.norm2 = _norm(dim, use_rmsnorm), _norm(dim, use_rmsnorm)
        self.attn = Attention(dim, heads, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm)
        hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLUFFN(dim, int(2 / 3 * hidden)) if use_swiglu else Mlp(dim, hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if wo_shift else 6) * dim))

    def forward(self, x, c, rope=None):
        if c.dim() < x.dim():
            c = c[:, None]
        mods = self.adaLN_modulation(c).chunk(4 if self.wo_shift else 6, dim=-1)
        if self.wo_shift:
            (s1, g1, s2, g2), h1, h2 = mods, None, None
        else:
            h1, s1, g1, h2, s2, g2 = mods
        x = x + seg_gate(self.attn(seg_modulate(self.norm1(x), h1, s1), rope=rope), g1)
        return x + seg_gate(self.mlp(seg_modulate(self.norm2(x), h2, s2)), g2)


class FourierTime(nn.Module):
    """GaussianFourierEmbedding: W ~ N(0, scale^2) fixed (a Parameter with requires_grad=False, so it is
    in the state dict), features [sin(2 pi t W), cos(2 pi t W)] -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden, n_freqs=256, scale=1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_freqs) * scale, requires_grad=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        arg = t[:, None] * self.W[None] * 2 * math.pi
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1))


class DiTDH(nn.Module):
    """DiTwDDTHead with one patch size for s and x (the only setting the reference runs with)."""

    def __init__(self, input_size=4, patch_size=1, in_channels=4, hidden_size=(32, 48), depth=(2, 2),
                 num_heads=(2, 3), mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, use_qknorm=False,
                 use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False, use_pos_embed=True):
        super().__init__()
        d_s, d_x = hidden_size
        self.n_trunk, self.p, self.c = depth[0], patch_size, in_channels
        grid = input_size // patch_size
        self.s_embedder, self.x_embedder = nn.Module(), nn.Module()
        self.s_embedder.proj = nn.Conv2d(in_channels, d_s, patch_size, patch_size)
        self.x_embedder.proj = nn.Conv2d(in_channels, d_x, patch_size, patch_size)
        self.s_projector = nn.Linear(d_s, d_x) if d_s != d_x else nn.Identity()
        self.t_embedder = FourierTime(d_s)
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + int(class_dropout_prob > 0), d_s)
        self.use_pos_embed = use_pos_embed
        if use_pos_embed:
            self.pos_embed = nn.Parameter(torch.from_numpy(sincos_table(d_s, grid))[None], requires_grad=False)
        self.enc_feat_rope = GridRope(d_s // num_heads[0] // 2, pt_seq_len=grid) if use_rope else None
        self.dec_feat_rope = GridRope(d_x // num_heads[1] // 2, pt_seq_len=grid) if use_rope else None
        self.blocks = nn.ModuleList([
            DDTBlock(d_s if i < depth[0] else d_x, num_heads[0] if i < depth[0] else num_heads[1], mlp_ratio,
                     use_qknorm, use_swiglu, use_rmsnorm, wo_shift) for i in range(depth[0] + depth[1])])
        self.final_layer = nn.Module()
        self.final_layer.norm_final = _norm(d_x, use_rmsnorm)
        self.final_layer.linear = nn.Linear(d_x, patch_size * patch_size * in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_x, 2 * d_x))

    def forward(self, x, t, y):
        t_emb = self.t_embedder(t)
        c = F.silu(t_emb + self.y_embedder.embedding_table(y))
        s = self.s_embedder.proj(x).flatten(2).transpose(1, 2)
        if self.use_pos_embed:
            s = s + self.pos_embed
        for block in self.blocks[:self.n_trunk]:
            s = block(s, c, self.enc_feat_rope)
        s = self.s_projector(F.silu(t_emb[:, None].expand(-1, s.shape[1], -1) + s))
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2)
        for block in self.blocks[self.n_trunk:]:
            h = block(h, s, self.dec_feat_rope)
        shift, scale = self.final_layer.adaLN_modulation(s).chunk(2, dim=-1)
        h = self.final_layer.linear(seg_modulate(self.final_layer.norm_final(h), shift, scale))
        n, g = h.shape[0], int(round(h.shape[1] ** 0.5))
        h = h.reshape(n, g, g, self.p, self.p, self.c)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(n, self.c, g * self.p, g * self.p)


def randomize(module, seed):
    """Every trainable weight random (adaLN and the final layer included, which the reference zeroes,
    so the whole network is exercised); norm scales around 1; the fixed W and pos_embed stay."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in ("pos_embed", "t_embedder.W"):
                continue
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith(".weight") else noise)
