"""A tiny stand-in for a prepared `imagenet2012` TFDS directory (random RGB images, 1000-class
labels, array_record), so the ImageNet config path runs end to end in the tests.

Written by a builder class registered under another name and stored under the real one:
`unigen.data.load_builder` reads prepared data sets from their files only
(`builder_from_files`), exactly as it reads a real imagenet2012 preparation.
"""

from __future__ import annotations

import numpy as np


def write_fake_imagenet(data_dir: str, *, size: int = 32, train: int = 24, validation: int = 8) -> str:
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import registered

    with registered.skip_registration():
        class Imagenet2012(tfds.core.GeneratorBasedBuilder):
            """Random images with ImageNet's feature spec (image, label of 1000 classes)."""
            VERSION = tfds.core.Version("5.1.0")
            RELEASE_NOTES = {"5.1.0": "fake"}
            code_path = None

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=1000),
                    "file_name": tfds.features.Text()}), supervised_keys=("image", "label"))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(train, 0),
                        "validation": self._generate_examples(validation, 1)}

            def _generate_examples(self, n, seed):
                from PIL import Image
                rng = np.random.default_rng(seed)
                for i in range(n):
                    # non-square frames of varying size, as ImageNet's: the pipeline centre-crops
                    h, w = size + int(rng.integers(0, 9)), size + int(rng.integers(0, 9))
                    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # PNG without TF
                    yield i, {"image": image, "label": int(rng.integers(0, 1000)), "file_name": f"fake_{seed}_{i}.JPEG"}

        builder = Imagenet2012(data_dir=data_dir, file_format="array_record")
        tfds.disable_progress_bar()
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir
