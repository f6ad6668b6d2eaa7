"""`linear_attention`: one function in front of the four implementations."""

from __future__ import annotations

from ..block_sparse.api import check_impl
from .state import LinearState, check_state, init_linear_state

DEFAULT_EPS = 1e-15  # SANA's value (diffusers SanaLinearAttnProcessor2_0)


def linear_attention(
    q,
    k,
    v,
    *,
    chunk_size: int | None = None,
    state: LinearState | None = None,
    return_state: bool = False,
    eps: float = DEFAULT_EPS,
    impl: str = "xla",
    interpret: bool | None = None,
):
    """ReLU linear attention, O_i = Σ_j v_j φ(k_j)·φ(q_i) / (Σ_j φ(k_j)·φ(q_i) + eps).

    q: (B, Tq, H, Dk), k: (B, Tk, H, Dk), v: (B, Tk, H, Dv) -> (B, Tq, H, Dv).
    `chunk_size=None`: bidirectional over the whole sequence (SANA). An int: block-causal
    (SANA-Video) — chunk c (tokens [c·C, (c+1)·C)) sees chunks ≤ c; needs Tq == Tk.
    `state`: a `LinearState` summarising earlier tokens, which every query here also sees
    (streaming: feed a sequence chunk by chunk, carrying the state). With a state or
    `return_state=True` the result is `(out, new_state)`; new_state adds this call's keys.
    There is no softmax, hence no scale: a positive scale on q cancels in the ratio.
    """
    name = "linear_attention"
    for label, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name}: {label} must be (B, T, H, D); got {getattr(x, 'shape', None)}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"{name}: shapes do not agree: q{q.shape} k{k.shape} v{v.shape} (need q, k with the "
            "same B, H, Dk; k, v with the same B, Tk, H)"
        )
    if chunk_size is not None:
        if int(chunk_size) <= 0:
            raise ValueError(f"{name}: chunk_size must be a positive int or None; got {chunk_size}")
        if q.shape[1] != k.shape[1]:
            raise ValueError(
                f"{name}: block-causal (chunk_size={chunk_size}) is self-attention; got "
                f"Tq={q.shape[1]} != Tk={k.shape[1]}"
            )
        chunk_size = int(chunk_size)
    check_impl(impl, name)
    batch, _, heads, dim = q.shape
    vdim = v.shape[-1]
    want_state = return_state or state is not None
    state = (
        init_linear_state(batch, heads, dim, vdim)
        if state is None
        else check_state(state, batch, heads, dim, vdim)
    )
    if impl == "reference":
        from .reference import linear_attention_reference as fn
    elif impl == "xla":
        from .xla import linear_attention_xla as fn
    elif impl == "pallas":
        from .pallas import linear_attention_pallas

        def fn(q, k, v, state, **kw):
            return linear_attention_pallas(q, k, v, state, interpret=interpret, **kw)
    else:
        from .triton import linear_attention_triton as fn
    out, new_state = fn(q, k, v, state, chunk_size=chunk_size, eps=float(eps))
    return (out, new_state) if want_state else out
