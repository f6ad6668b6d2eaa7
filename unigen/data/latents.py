"""Pre-encoded latents: a TFDS image set run once through a tokenizer, stored as array_record.

    meta = encode_dataset(codec, "imagenet2012", "train", image_size=256, out_dir=store)
    ds = latent_dataset(store, "train", batch_size=256, seed=0)
    batch = next(iter(ds))   # {"latent_mean", "latent_logvar": (B, h, w, C) float32, "label": (B,) int32}

A deterministic tokenizer (an RAE, `codec.deterministic`) has no posterior: its records hold the
latent alone, `latents.json` says `"posterior": "deterministic"`, and batches have no
"latent_logvar".

Why moments and not samples: DiT (and LDM) train on a fresh posterior sample z = mean +
exp(logvar / 2) eps of each image every step; storing (mean, logvar) keeps that exactly, and
the task draws eps inside the compiled step (unigen/tasks/latent_space.py).

A store is a folder: `latents.json` (written last: its presence means complete) and
`<split>-<process>-of-<processes>.array_record` files whose records are the raw float32 bytes
of mean, then logvar (each h*w*C, row-major NHWC) and an int64 label. `latents.json` holds the
shape, the record counts, the tokenizer's fingerprint (the exact weights: latents written by
another encoder are refused before anything compiles), its scaling/shift factors, and the
per-channel mean and standard deviation of the sampled latents over the split
(E[z] = avg(mean), E[z^2] = avg(mean^2 + exp(logvar)): exact for fresh samples), which
LightningDiT-style per-channel normalisation uses.

Several processes (multi-host): each encodes its own contiguous block of records and writes
its own file and partial sums; process 0 merges them into `latents.json` after all finished.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np

from unigen.errors import DataError

FORMAT_VERSION = 1
META_FILE = "latents.json"


def _partial_path(out_dir: str, split: str, index: int, count: int) -> str:
    return os.path.join(out_dir, f"{split}-{index:05d}-of-{count:05d}")


def encode_dataset(codec, name: str, split: str, *, image_size: int, out_dir: str, data_dir=None,
                   batch_size: int = 64, process_index: int = 0, process_count: int = 1,
                   progress: bool = True) -> dict | None:
    """Encode every record of `name`/`split` (this process's block) into `out_dir`. Returns the
    store's metadata on process 0 once all processes finished (None on the others)."""
    from unigen.data.pipeline import Preprocess
    from unigen.data.tfds_source import data_source

    source = data_source(name, split, data_dir)
    shape = codec.latent_shape(image_size)
    per = -(-len(source) // process_count)
    lo, hi = min(len(source), process_index * per), min(len(source), (process_index + 1) * per)  # may be empty
    os.makedirs(out_dir, exist_ok=True)
    stem = _partial_path(out_dir, split, process_index, process_count)
    preprocess = Preprocess(image_size)
    sums = np.zeros((3, shape[-1]), np.float64)  # count per channel, sum z, sum z^2

    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm.auto import tqdm
    tmp = stem + ".array_record.tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    bar = tqdm(total=hi - lo, desc=f"encode {name}/{split}", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(lo, hi, batch_size):
            idx = list(range(start, min(hi, start + batch_size)))
            records = [preprocess(source[i]) for i in idx]
            images = np.stack([r["image"] for r in records])
            if len(idx) < batch_size:  # one compiled shape: pad with copies of the first image
                images = np.concatenate([images, np.repeat(images[:1], batch_size - len(idx), axis=0)])
            mean, logvar = codec.encode(images)
            mean = mean[:len(idx)]
            if mean.shape[1:] != shape:
                raise DataError(f"the tokenizer encoded {image_size}px images to {mean.shape[1:]}, expected {shape}")
            second = np.square(mean)
            if logvar is not None:
                logvar = logvar[:len(idx)]
                second = second + np.exp(logvar)
            sums[0] += mean.size // shape[-1]
            sums[1] += mean.reshape(-1, shape[-1]).sum(0)
            sums[2] += second.reshape(-1, shape[-1]).sum(0)
            for i, r in enumerate(records):
                moments = mean[i].tobytes() + (b"" if logvar is None else logvar[i].tobytes())
                writer.write(moments + np.int64(r["label"]).tobytes())
            bar.update(len(idx))
    finally:
        writer.close()
        bar.close()
    os.replace(tmp, stem + ".array_record")
    with open(stem + ".json", "w") as f:
        json.dump(dict(records=hi - lo, sums=sums.tolist()), f)

    if process_count > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"unigen latents {split} written")
    if process_index != 0:
        if process_count > 1:
            multihost_utils.sync_global_devices(f"unigen latents {split} merged")
        return None
    meta = _merge(codec, name, split, image_size, shape, out_dir, process_count)
    if process_count > 1:
        multihost_utils.sync_global_devices(f"unigen latents {split} merged")
    return meta


def _merge(codec, name, split, image_size, shape, out_dir, count) -> dict:
    total, sums = 0, np.zeros((3, shape[-1]), np.float64)
    for i in range(count):
        with open(_partial_path(out_dir, split, i, count) + ".json") as f:
            part = json.load(f)
        total += part["records"]
        sums += np.asarray(part["sums"])
    mean = sums[1] / sums[0]
    std = np.sqrt(np.maximum(sums[2] / sums[0] - mean ** 2, 0.0))
    meta_path = os.path.join(out_dir, META_FILE)
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    meta.update(format_version=FORMAT_VERSION, dataset=name, image_size=int(image_size), latent_shape=list(shape),
                dtype="float32", posterior="deterministic" if codec.deterministic else "gaussian",
                encoder=dict(source=codec.source, fingerprint=codec.fingerprint, scaling_factor=codec.scaling_factor,
                             shift_factor=codec.shift_factor))
    meta.setdefault("splits", {})[split] = dict(records=int(total), files=count, channel_mean=mean.tolist(),
                                                channel_std=std.tolist())
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, meta_path)
    return meta


def read_meta(store: str) -> dict | None:
    path = os.path.join(store, META_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_store(meta: dict, store: str, codec, *, name: str, split: str | None, image_size: int) -> None:
    """DataError unless `store` holds `split` of `name` at `image_size`, written by `codec`
    (split=None: any splits, e.g. before encoding a new one into it)."""
    def need(ok, what, fix):
        if not ok:
            raise DataError(f"latent store {store}: {what}; {fix}")
    need(meta.get("format_version") == FORMAT_VERSION, f"format version {meta.get('format_version')}",
         f"this unigen reads version {FORMAT_VERSION}: delete the folder to re-encode")
    enc = meta.get("encoder", {})
    need(enc.get("fingerprint") == codec.fingerprint,
         f"written by a different encoder ({enc.get('source')!r}, fingerprint {str(enc.get('fingerprint'))[:12]}) "
         f"than config.data.latent_encoder={codec.source!r} (fingerprint {codec.fingerprint[:12]})",
         "point config.data.latent_encoder at the encoder that wrote it, or config.data.latent_dir at a new "
         "folder ('' = a folder named after the encoder) to encode again")
    need(meta.get("dataset") == name, f"holds data set {meta.get('dataset')!r}, not {name!r}",
         "set config.data.latent_dir to another folder")
    need(meta.get("image_size") == image_size, f"encoded at {meta.get('image_size')}px, not {image_size}px",
         "set config.data.latent_dir to another folder")
    need(split is None or split in meta.get("splits", {}), f"has no split {split!r} (it has {sorted(meta.get('splits', {}))})",
         "it is encoded on first use; remove latents.json to redo the whole store")


@dataclasses.dataclass(frozen=True)
class DecodeLatent:
    """Picklable record -> {"latent_mean", "latent_logvar" (gaussian only), "label"} for grain."""
    shape: tuple[int, int, int]
    deterministic: bool = False

    def __call__(self, record: bytes) -> dict:
        n = int(np.prod(self.shape))
        moments = 1 if self.deterministic else 2
        values = np.frombuffer(record, np.float32, count=moments * n)
        label = np.frombuffer(record, np.int64, count=1, offset=4 * moments * n)[0]
        out = {"latent_mean": values[:n].reshape(self.shape), "label": np.int32(label)}
        if not self.deterministic:
            out["latent_logvar"] = values[n:].reshape(self.shape)
        return out


def latent_dataset(store: str, split: str, *, batch_size: int, seed: int, shuffle: bool = True,
                   num_epochs: int | None = None, process_index: int = 0, process_count: int = 1):
    """A grain IterDataset of latent batches, sharded, shuffled and repeated exactly as
    `unigen.data.make_dataset` does with images (its iterator state is a position)."""
    import grain

    meta = read_meta(store)
    if meta is None or split not in meta.get("splits", {}):
        raise DataError(f"no encoded split {split!r} in {store}: run unigen.data.latents.encode_dataset first")
    info = meta["splits"][split]
    paths = sorted(glob.glob(os.path.join(store, f"{split}-*-of-{info['files']:05d}.array_record")))
    if len(paths) != info["files"]:
        raise DataError(f"latent store {store}: {len(paths)} of {info['files']} {split} files found; delete "
                        f"{META_FILE} to encode again")
    source = grain.sources.ArrayRecordDataSource(paths)
    if len(source) != info["records"]:
        raise DataError(f"latent store {store}: {len(source)} {split} records, {META_FILE} says {info['records']}; "
                        f"delete {META_FILE} to encode again")
    per_process = len(source) // process_count
    if per_process < batch_size:
        raise DataError(f"latent store {store}: {len(source)} {split} records, {per_process} per process: "
                        f"use batch_size <= {per_process}")
    ds = grain.MapDataset.source(source)
    ds = ds[process_index * per_process:(process_index + 1) * per_process]
    if shuffle:
        ds = ds.shuffle(seed=int(seed))
    decode = DecodeLatent(tuple(meta["latent_shape"]), meta.get("posterior") == "deterministic")
    ds = ds.repeat(num_epochs).map(decode)
    return ds.batch(int(batch_size), drop_remainder=True).to_iter_dataset()
