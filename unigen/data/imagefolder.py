"""Captioned image folders: one's own images and their captions as text-to-image training data.

    folder = read_captioned_folder("my_images")         # CaptionedFolder: (path, caption) pairs
    ds = captioned_dataset(folder, batch_size=8, image_size=512, seed=0, crop="random", flip=True)
    it = iter(ds)
    batch = next(it)   # {"image": (8,512,512,3) float32 in [-1,1], "caption": (8,) str array,
                       #  "index": (8,) int64 positions in folder.items}
    state = it.get_state()                               # goes into the training checkpoint

Layouts read (the "imagefolder" convention of Hugging Face `datasets` and the diffusers
fine-tuning scripts, plus the caption-file convention of many LoRA tools):

* `metadata.jsonl`: one JSON object per line with `file_name` (the image's path relative to the
  folder holding that metadata file) and `text` (its caption); other fields are ignored. Several
  metadata files may sit in subfolders, each naming images relative to its own folder. When any
  metadata.jsonl exists, captions come from metadata files only (`.txt` files are then not read).
* otherwise a caption file beside each image: `cat.png` + `cat.txt` (UTF-8, surrounding
  whitespace stripped).

Images (any nesting): .png .jpg .jpeg .webp .bmp, in any letter case. Hidden files and folders
(a name starting with ".") are not read. Order: sorted by the path relative to the folder, so
the list is the same on every machine and every run.

Unreadable or truncated images are skipped, not fatal: a scraped or copied folder often holds a
few broken files, and dropping them loses nothing the user asked for. They are counted in
`CaptionedFolder.skipped` and announced once with `warnings.warn` (the count and a few names).
`read_captioned_folder(verify=True)` (the default) decodes every image once to find them; with
verify=False only headers are read, and an image that fails to decode later raises DataError
naming it (a grain pipeline cannot drop a record mid-epoch without changing every later batch).
Every other problem (no images, no captions, a bad metadata line, a caption for a missing image,
a duplicate entry, images without captions) raises DataError naming the file and the fix.

Preprocessing (`load_image`) follows what the diffusers training scripts do with torchvision
(Resize(size) on the short side, CenterCrop or RandomCrop, RandomHorizontalFlip, Normalize(0.5)),
with PIL alone: EXIF orientation applied, converted to RGB, short side resized to `size` with
PIL bicubic on the 8-bit image (the long side int(size * long / short), as torchvision), cropped
to size x size, flipped, scaled to [-1, 1].

Determinism: the random crop and flip of a record are drawn from
numpy.random.default_rng([seed, epoch, index]) (index: the record's position in the folder), so
they depend on neither the shuffle, the process count nor the worker count, and a restored grain
iterator reproduces them exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np

from unigen.data.pipeline import _is_int
from unigen.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"
MISSING_CAPTION = ("error", "skip", "empty")
CROPS = ("center", "random")
_SHOWN = 5  # names listed in a message about many files


def _few(names) -> str:
    names = list(names)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


@dataclasses.dataclass(frozen=True)
class SkipReport:
    """What `read_captioned_folder` left out: unreadable images (path, reason) and, with
    missing_caption="skip", images that have no caption."""
    unreadable: tuple[tuple[str, str], ...] = ()
    uncaptioned: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.unreadable) + len(self.uncaptioned)


@dataclasses.dataclass(frozen=True)
class CaptionedFolder:
    """The images of a folder with their captions, in a deterministic order."""
    root: str
    items: tuple[tuple[str, str], ...]   # (image path, caption), sorted by path relative to root
    skipped: SkipReport = SkipReport()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.items)

    @property
    def captions(self) -> tuple[str, ...]:
        return tuple(c for _, c in self.items)


def _walk(root: str):
    """(image paths, .txt paths, metadata paths) under root, hidden entries left out."""
    images, texts, metas = [], [], []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.normpath(os.path.join(d, name))
            low = name.lower()
            if name == METADATA_FILE:
                metas.append(path)
            elif low.endswith(IMAGE_EXTENSIONS):
                images.append(path)
            elif low.endswith(".txt"):
                texts.append(path)
    return images, texts, metas


def _read_metadata(path: str, caption_key: str, captions: dict, where: dict) -> None:
    """Add the (image path -> caption) pairs of one metadata.jsonl into `captions`."""
    base = os.path.dirname(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or type(e).__name__})") from None
    fix = (f'each line of {METADATA_FILE} must be a JSON object like '
           f'{{"file_name": "cat.png", "{caption_key}": "a cat"}}')
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not records
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} line {n} is not valid JSON ({getattr(e, 'msg', e)}); {fix}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {n} is not a JSON object; {fix}")
        missing = [k for k in ("file_name", caption_key) if k not in record]
        if missing:
            raise DataError(f"{path} line {n} has no {' or '.join(repr(k) for k in missing)} field; {fix}")
        name, text = record["file_name"], record[caption_key]
        if not isinstance(name, str) or not name:
            raise DataError(f"{path} line {n}: file_name must be a non-empty string, got {name!r}; {fix}")
        if not isinstance(text, str):
            raise DataError(f"{path} line {n}: {caption_key!r} must be a string, got {text!r}; {fix}")
        image = os.path.normpath(os.path.join(base, name))
        if image in where:
            raise DataError(f"{path} line {n}: {name!r} is already captioned at {where[image]}; "
                            f"keep one entry per image")
        if not os.path.isfile(image):
            raise DataError(f"{path} line {n} captions {name!r}, but there is no file at {image}; "
                            f"add the image or remove the line")
        if not image.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f"{path} line {n}: {name!r} is not an image this reads "
                            f"({', '.join(IMAGE_EXTENSIONS)}); convert it or remove the line")
        captions[image] = text
        where[image] = f"{path} line {n}"


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8-sig").strip()
    except OSError as e:
        raise DataError(f"caption file {path} cannot be read ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"caption file {path} is not UTF-8 text (byte {e.start}); "
                        f"save it as UTF-8") from None


def _check_image(path: str, verify: bool) -> str | None:
    """None if the image reads; otherwise why not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if verify:
                im.load()  # decodes every pixel: finds truncated files
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
        return f"{type(e).__name__}: {e}"
    return None


def read_captioned_folder(path: str | os.PathLike, *, missing_caption: str = "error",
                          caption_key: str = "text", verify: bool = True) -> CaptionedFolder:
    """The captioned images of folder `path` (see the module docstring for the layouts).

    missing_caption: what to do with images that have no caption while others have one:
      "error" (the default) raises DataError listing a few of them; "skip" leaves them out
      (listed in `skipped.uncaptioned`); "empty" gives them the caption "" (the unconditional
      prompt of classifier-free guidance).
    caption_key: the metadata field holding the caption ("text", as Hugging Face's imagefolder).
    verify: decode every image once now, so damaged ones are skipped (counted in
      `skipped.unreadable`, with a warning) instead of failing during training. verify=False
      only reads each image's header (damaged headers are still skipped).
    """
    if missing_caption not in MISSING_CAPTION:
        raise DataError(f"missing_caption={missing_caption!r} is invalid; pass one of "
                        f"{', '.join(repr(m) for m in MISSING_CAPTION)}")
    root = os.path.normpath(os.fspath(path))
    if not os.path.isdir(root):
        what = "is a file" if os.path.exists(root) else "does not exist"
        raise DataError(f"image folder {root} {what}; give the folder holding the images")
    images, texts, metas = _walk(root)
    if not images:
        raise DataError(f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} at any depth); "
                        f"give the folder holding the images")

    captions: dict[str, str] = {}
    if metas:
        where: dict[str, str] = {}
        for meta in metas:
            _read_metadata(meta, caption_key, captions, where)
        source = f"the {METADATA_FILE} files"
    else:
        by_stem = {os.path.splitext(p)[0]: p for p in texts}
        stems = {os.path.splitext(p)[0] for p in images}
        orphans = [p for s, p in sorted(by_stem.items()) if s not in stems]
        if orphans:
            raise DataError(f"caption file(s) {_few(orphans)} have no image beside them (no "
                            f"{'/'.join(IMAGE_EXTENSIONS)} file of the same name); add the image "
                            f"or move the caption file out of {root}")
        for image in images:
            text = by_stem.get(os.path.splitext(image)[0])
            if text is not None:
                captions[image] = _read_text(text)
        source = "the .txt files"
    if not captions:
        others = [n for n in ("metadata.csv", "metadata.parquet") if os.path.exists(os.path.join(root, n))]
        note = f" ({' and '.join(others)} found: only {METADATA_FILE} is read)" if others else ""
        raise DataError(f"no captions in {root}{note}: write a {METADATA_FILE} there (one line per "
                        f'image: {{"file_name": "cat.png", "{caption_key}": "a cat"}}) or a .txt '
                        f"caption beside each image (cat.png + cat.txt)")

    uncaptioned = [p for p in images if p not in captions]
    if uncaptioned and missing_caption == "error":
        raise DataError(f"{len(uncaptioned)} of {len(images)} images in {root} have no caption in "
                        f"{source}: {_few(uncaptioned)}; caption them, or pass "
                        f"missing_caption='skip' (leave them out) or 'empty' (caption \"\")")
    if missing_caption == "empty":
        captions.update({p: "" for p in uncaptioned})

    rel = lambda p: os.path.relpath(p, root).replace(os.sep, "/")  # noqa: E731
    keys = sorted(captions, key=rel)
    unreadable = []
    for p in keys:
        why = _check_image(p, verify)
        if why is not None:
            unreadable.append((p, why))
    if unreadable:
        bad = {p for p, _ in unreadable}
        keys = [p for p in keys if p not in bad]
        warnings.warn(f"{len(unreadable)} unreadable image(s) in {root} skipped: "
                      f"{_few(p for p, _ in unreadable)} (first: {unreadable[0][1]})", stacklevel=2)
        if not keys:
            raise DataError(f"none of the captioned images in {root} can be read "
                            f"(first: {unreadable[0][0]}: {unreadable[0][1]})")
    skipped = SkipReport(tuple(unreadable), tuple(uncaptioned) if missing_caption == "skip" else ())
    return CaptionedFolder(root, tuple((p, captions[p]) for p in keys), skipped)


def load_image(path: str | os.PathLike, size: int, *, crop: str = "center", flip: bool = False,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """The image at `path` as (size, size, 3) float32 RGB in [-1, 1].

    The short side is resized to `size` (PIL bicubic on the 8-bit RGB image), then
    crop="center" takes the central square (offsets int(round((extra) / 2)), as torchvision's
    CenterCrop) and crop="random" a uniformly placed one. flip=True flips horizontally with
    probability 1/2. Random choices come from `rng` (the crop offset first, then the flip);
    rng is required when crop="random" or flip=True. Grey, RGBA and palette images become RGB
    (alpha dropped, as diffusers' scripts' convert("RGB")); EXIF orientation is applied.
    """
    from PIL import Image, ImageOps

    if not (_is_int(size) and size > 0):
        raise DataError(f"load_image: size={size!r} is invalid; pass a positive int")
    if crop not in CROPS:
        raise DataError(f"load_image: crop={crop!r} is invalid; pass 'center' or 'random'")
    if (crop == "random" or flip) and rng is None:
        raise DataError("load_image: crop='random' and flip=True draw from rng; pass "
                        "rng=numpy.random.default_rng(...)")
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":  # palette transparency would warn in a direct convert
                im = im.convert("RGBA")
            im = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 -- any decoding failure of a damaged file
        raise DataError(f"image {path} cannot be read ({type(e).__name__}: {e}); remove it, or read "
                        f"the folder with read_captioned_folder(verify=True) to skip damaged images") from None
    w, h = im.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    if new != (w, h):
        im = im.resize(new, Image.Resampling.BICUBIC)
    x = np.asarray(im)
    h, w = x.shape[:2]
    if crop == "center":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    x = x[top:top + size, left:left + size]
    if flip and rng.random() < 0.5:
        x = x[:, ::-1]
    return (x.astype(np.float32) / 127.5 - 1.0)


@dataclasses.dataclass(frozen=True)
class CaptionedImageSource:
    """A grain random-access data source over a CaptionedFolder:
    source[i] == {"image": (size,size,3) float32 in [-1,1], "caption": str, "index": int}.

    `record(i, epoch)` gives epoch `epoch`'s view of record i (random crop / flip drawn from
    default_rng([seed, epoch, i])); `source[i]` is epoch 0's.
    """
    folder: CaptionedFolder
    size: int
    crop: str = "center"
    flip: bool = False
    seed: int = 0

    def __len__(self) -> int:
        return len(self.folder.items)

    def record(self, index: int, epoch: int = 0) -> dict:
        index = int(index)
        path, caption = self.folder.items[index]
        rng = None
        if self.crop == "random" or self.flip:
            rng = np.random.default_rng([int(self.seed), int(epoch), index])
        image = load_image(path, self.size, crop=self.crop, flip=self.flip, rng=rng)
        return {"image": image, "caption": caption, "index": index}

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self.record(index % len(self))

    def __repr__(self) -> str:  # grain logs sources; the item list can be long
        return (f"CaptionedImageSource({self.folder.root!r}, {len(self)} images, size={self.size}, "
                f"crop={self.crop!r}, flip={self.flip}, seed={self.seed})")


@dataclasses.dataclass(frozen=True)
class _LoadView:
    """map_with_index callable: (global index, record index) -> the record's view of its epoch."""
    source: CaptionedImageSource
    per_epoch: int

    def __call__(self, position: int, index) -> dict:
        return self.source.record(int(index), epoch=int(position) // self.per_epoch)


def _check(name, value, ok, fix):
    if not ok:
        raise DataError(f"captioned_dataset: {name}={value!r} is invalid; {fix}")


def captioned_dataset(folder: CaptionedFolder | str | os.PathLike, *, batch_size: int, image_size: int,
                      seed: int, crop: str = "center", flip: bool = False, shuffle: bool = True,
                      num_epochs: int | None = None, process_index: int = 0, process_count: int = 1,
                      missing_caption: str = "error", read_options=None):
    """A grain IterDataset of batches {"image": (B,S,S,3) float32 in [-1,1], "caption": (B,)
    numpy str array, "index": (B,) int64} over a captioned folder (a path is read with
    `read_captioned_folder(path, missing_caption=...)`).

    Built as `unigen.data.make_dataset` builds its pipelines, so the iterator state is a
    position: record indices -> this process's contiguous block of len // process_count ->
    shuffle(seed, reshuffled each epoch) -> repeat(num_epochs; None = forever) -> load the view
    of (seed, epoch, index) -> batch(batch_size per process, drop_remainder=True).
    """
    import grain

    _check("batch_size", batch_size, _is_int(batch_size) and batch_size > 0,
           "pass a positive int (per-process batch)")
    _check("image_size", image_size, _is_int(image_size) and image_size > 0, "pass a positive int")
    _check("process_count", process_count, _is_int(process_count) and process_count > 0,
           "pass jax.process_count()")
    _check("process_index", process_index, _is_int(process_index)
           and 0 <= process_index < process_count, f"pass 0 <= index < {process_count}")
    _check("num_epochs", num_epochs, num_epochs is None or (_is_int(num_epochs) and num_epochs > 0),
           "pass a positive int or None")
    _check("crop", crop, crop in CROPS, "pass 'center' or 'random'")
    _check("seed", seed, _is_int(seed) and 0 <= seed < 2**32, "pass an int in [0, 2**32)")
    if not isinstance(folder, CaptionedFolder):
        folder = read_captioned_folder(folder, missing_caption=missing_caption)
    source = CaptionedImageSource(folder, int(image_size), crop, bool(flip), int(seed))
    per_process = len(source) // process_count
    _check("batch_size", batch_size, per_process >= batch_size,
           f"{folder.root} has {len(source)} images, {per_process} per process: "
           f"use batch_size <= {per_process}")

    p, n = int(process_index), per_process
    ds = grain.MapDataset.range(len(source))[p * n:(p + 1) * n]
    if shuffle:
        ds = ds.shuffle(seed=int(seed))  # reseeded per epoch by repeat() below
    ds = ds.repeat(None if num_epochs is None else int(num_epochs))
    ds = ds.map_with_index(_LoadView(source, n))  # after repeat(): the index is epoch * n + position
    ds = ds.batch(int(batch_size), drop_remainder=True)
    return ds.to_iter_dataset(read_options) if read_options else ds.to_iter_dataset()
