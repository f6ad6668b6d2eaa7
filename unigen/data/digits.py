"""scikit-learn's handwritten digits as a TFDS data set (`digits`), written as array_record.

Source: the 1797 8x8 images that ship inside scikit-learn (`sklearn.datasets.load_digits`);
no network. Each pixel is a grey level 0..16 (a count of set pixels in a 4x4 block of the
original 32x32 bitmap); we store uint8 with ``round(v * 255 / 16)`` so 0 -> 0 and 16 -> 255.

Split rule (deterministic, class-balanced): walk the data set in its shipped order; within
each class, the 1st, 6th, 11th, ... image of that class (per-class index % 5 == 0) is
*test*, the rest *train*. That gives ceil(count_c / 5) test images per class: 364 test,
1433 train. `split_indices` is the single place the rule lives; the builder and the
evaluation code both use it.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
TEST_EVERY = 5  # every 5th image of each class is test


def _load_sklearn() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # local: sklearn is the `data` extra

    d = load_digits()
    return d.images, d.target


def scale_grey_levels(images_0_16: np.ndarray) -> np.ndarray:
    """0..16 grey levels -> uint8 0..255 as round(v*255/16) (numpy rounds half to even)."""
    return np.round(np.asarray(images_0_16, np.float64) * 255.0 / 16.0).astype(np.uint8)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices (into the shipped order) of `split` ('train' or 'test') under the rule above."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    labels = np.asarray(labels)
    rank_in_class = np.zeros(len(labels), np.int64)
    for c in range(NUM_CLASSES):
        where = np.flatnonzero(labels == c)
        rank_in_class[where] = np.arange(len(where))
    is_test = rank_in_class % TEST_EVERY == 0
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def digits_arrays(split: str) -> dict[str, np.ndarray]:
    """The split as numpy: image uint8 (N,8,8,1) 0..255, label int32 (N,), index int32 (N,)."""
    images, labels = _load_sklearn()
    idx = split_indices(labels, split)
    return {
        "image": scale_grey_levels(images[idx])[..., None],
        "label": labels[idx].astype(np.int32),
        "index": idx.astype(np.int32),
    }


def _make_builder_class():
    # Defined lazily so that importing unigen.data does not import tensorflow_datasets
    # (and does not register the builder) unless the TFDS path is used.
    import tensorflow_datasets as tfds

    class Digits(tfds.core.GeneratorBasedBuilder):
        """scikit-learn digits, 8x8 grey, 10 classes (see the module docstring)."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "8x8 uint8 images, per-class every-5th test split."}
        # tfds derives a URL-checksums file from the defining module's path; for a builder
        # living in a package outside tensorflow_datasets that lookup imports the
        # `importlib_resources` backport (absent on py>=3.9). We download nothing, so no
        # checksums file: say so directly.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    # Position in sklearn's array: lets tests and users trace each record.
                    "index": tfds.features.Scalar(dtype=np.int32),
                }),
                supervised_keys=("image", "label"),
                # Keep the records in data-set order on disk (tfds otherwise hashes keys).
                disable_shuffling=True,
                homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # the source ships inside scikit-learn
            return {s: self._generate_examples(s) for s in ("train", "test")}

        def _generate_examples(self, split):
            from PIL import Image  # tfds encodes PIL images to PNG without TensorFlow

            arrays = digits_arrays(split)
            for img, label, index in zip(arrays["image"], arrays["label"], arrays["index"]):
                yield int(index), {
                    "image": Image.fromarray(img[..., 0], mode="L"),
                    "label": int(label),
                    "index": int(index),
                }

    return Digits


_BUILDER_CLASS = None


def digits_builder_class():
    """The registered `tfds.core.GeneratorBasedBuilder` subclass named `digits`."""
    global _BUILDER_CLASS
    if _BUILDER_CLASS is None:
        _BUILDER_CLASS = _make_builder_class()
    return _BUILDER_CLASS
