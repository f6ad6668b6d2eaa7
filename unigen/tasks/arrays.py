"""Whole data splits as arrays, and functions run over arrays in fixed-shape batches: what the
tasks' evaluations and frozen-table builders share (one compile per batch size)."""

from __future__ import annotations

import jax
import numpy as np


def split_arrays(cfg, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images in [-1, 1], labels) of `config.data`'s split, in stored order (at most `limit`),
    preprocessed as the training loader does."""
    from unigen.data.pipeline import Preprocess
    from unigen.data.tfds_source import data_source
    d = cfg.data
    source = data_source(d.name, split, d.data_dir or None)
    n = len(source) if limit is None else min(limit, len(source))
    pre = Preprocess(d.image_size)
    records = [pre(source[i]) for i in range(n)]
    return np.stack([r["image"] for r in records]), np.asarray([r["label"] for r in records], np.int32)


def in_batches(fn, x, batch_size: int):
    """fn over `x` in batches of `batch_size` (numpy pytree out, concatenated). The last partial batch
    is padded with copies of its first row, so `fn` sees one shape (unless x fits in one batch)."""
    outs = []
    for i in range(0, len(x), batch_size):
        part = x[i:i + batch_size]
        n = len(part)
        if n < batch_size and len(x) > batch_size:
            part = np.concatenate([part, np.repeat(part[:1], batch_size - n, axis=0)])
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(part)))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)
