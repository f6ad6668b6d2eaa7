"""grain input pipeline over prepared TFDS image data sets (digits, mnist, cifar10, ...).

    ds = make_dataset("digits", "train", batch_size=64, image_size=16, seed=0)
    it = iter(ds)                     # grain DatasetIterator
    batch = next(it)          # {"image": (64,16,16,1) float32 in [-1,1], "label": (64,) int32}
    state = it.get_state()            # small dict: goes into the training checkpoint
    it2 = iter(ds); it2.set_state(state)   # continues with exactly the same batches

Order of operations (all index-based, so the iterator state is just a position):
  source -> this process's shard -> shuffle(seed, reshuffled every epoch) -> repeat(num_epochs)
  -> decode/crop/resize/normalise -> batch(drop_remainder=True).

Sharding: process p of P reads the contiguous block [p*n, (p+1)*n) with n = len // P, so the
shards are disjoint and every process yields the same number of batches (the last
len % P records are dropped). The shuffle permutes within the shard; with a fixed `seed`
the whole stream is a pure function of (seed, process_index, process_count).

Resize: PIL bilinear in float ("F" mode, per channel, no uint8 rounding). PIL widens the
triangle filter by the scale factor when shrinking, so downsampling is antialiased;
8 -> 16/32 upsampling is plain bilinear with half-pixel centres. crop="center" first takes
the central square (a no-op for square images); crop="none" resizes the full frame.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from unigen.data.tfds_source import data_source
from unigen.errors import DataError


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Picklable per-record transform: record dict -> {"image": HWC float32, "label": int32}."""

    image_size: int | None
    crop: str = "center"
    image_key: str = "image"
    label_key: str = "label"
    extra_keys: tuple[str, ...] = ()  # passed through untouched (e.g. "index" for tracing)

    def __call__(self, record: dict) -> dict:
        img = np.asarray(record[self.image_key])
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3:
            raise DataError(f"feature {self.image_key!r} must be HWC, got shape {img.shape}")
        if self.crop == "center":
            h, w = img.shape[:2]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img = img[top:top + s, left:left + s]
        x = img.astype(np.float32)
        if self.image_size is not None and x.shape[:2] != (self.image_size,) * 2:
            x = resize_bilinear(x, self.image_size)
        # uint8 0..255 -> [-1, 1]; float input is assumed to already be 0..255.
        x = np.clip(x / 127.5 - 1.0, -1.0, 1.0)
        out = {"image": x, "label": np.int32(record[self.label_key])}
        out.update({k: np.asarray(record[k]) for k in self.extra_keys})
        return out


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """(H,W,C) float32 -> (size,size,C) with PIL's (antialiased when shrinking) bilinear."""
    from PIL import Image

    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F")
                        .resize((size, size), Image.Resampling.BILINEAR))
             for c in range(x.shape[-1])]
    return np.stack(chans, axis=-1).astype(np.float32)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check(name, value, ok, fix):
    if not ok:
        raise DataError(f"make_dataset: {name}={value!r} is invalid; {fix}")


def make_dataset(name: str, split: str, *, batch_size: int, image_size: int | None,
                 seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int = 0, process_count: int = 1,
                 data_dir: str | os.PathLike | None = None, crop: str = "center",
                 image_key: str = "image", label_key: str = "label",
                 extra_keys: tuple[str, ...] = (), read_options=None, two_views=None):
    """A grain IterDataset of batches dict(image=(B,S,S,C) float32 in [-1,1], label=(B,) int32).

    batch_size is per process. num_epochs=None repeats forever. image_size=None keeps the
    stored size (all records must share it). extra_keys: record features passed through
    (batched) next to image/label. read_options: optional grain.ReadOptions.
    two_views: a `unigen.data.augment.DigitAugment`; each record then also holds "view_a" and
    "view_b", two fresh augmentations per epoch (contrastive learning; unigen.data.augment).
    """
    import grain

    _check("batch_size", batch_size, _is_int(batch_size) and batch_size > 0,
           "pass a positive int (per-process batch)")
    _check("image_size", image_size, image_size is None or
           (_is_int(image_size) and image_size > 0), "pass a positive int or None")
    _check("process_count", process_count, _is_int(process_count) and process_count > 0,
           "pass jax.process_count()")
    _check("process_index", process_index, _is_int(process_index)
           and 0 <= process_index < process_count, f"pass 0 <= index < {process_count}")
    _check("num_epochs", num_epochs, num_epochs is None or
           (_is_int(num_epochs) and num_epochs > 0), "pass a positive int or None")
    _check("crop", crop, crop in ("center", "none"), "pass 'center' or 'none'")
    _check("seed", seed, _is_int(seed) and 0 <= seed < 2**32,
           "pass an int in [0, 2**32)")

    source = data_source(name, split, data_dir)
    per_process = len(source) // process_count
    _check("batch_size", batch_size, per_process >= batch_size,
           f"{name}/{split} has {len(source)} records, {per_process} per process: "
           f"use batch_size <= {per_process}")

    ds = grain.MapDataset.source(source)
    p, n = int(process_index), per_process
    ds = ds[p * n:(p + 1) * n]
    if shuffle:
        ds = ds.shuffle(seed=int(seed))  # reseeded per epoch by repeat() below
    ds = ds.repeat(None if num_epochs is None else int(num_epochs))
    size = None if image_size is None else int(image_size)
    ds = ds.map(Preprocess(size, crop, image_key, label_key, tuple(extra_keys)))
    if two_views is not None:
        from unigen.data.augment import add_two_views
        ds = add_two_views(ds, two_views, seed=int(seed), process_index=p)
    ds = ds.batch(int(batch_size), drop_remainder=True)
    return ds.to_iter_dataset(read_options) if read_options else ds.to_iter_dataset()
