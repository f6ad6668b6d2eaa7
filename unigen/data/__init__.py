"""Data: the embedded `digits` TFDS builder and grain pipelines over prepared TFDS sets.

Nothing here imports TensorFlow; tensorflow_datasets and grain are imported on first use.
"""

from unigen.config_sections import declare_fields
from unigen.data.digits import (NUM_CLASSES, digits_arrays, digits_builder_class,
                                scale_grey_levels, split_indices)
from unigen.data.imagefolder import (CaptionedFolder, CaptionedImageSource, captioned_dataset, load_image,
                                     read_captioned_folder)
from unigen.data.pipeline import Preprocess, make_dataset, resize_bilinear
from unigen.data.tfds_source import data_source, load_builder, prepare_digits, resolve_data_dir

# Where the data set and its pre-encoded latents live may change when a run resumes (a moved disk).
declare_fields("data", resumable=("data_dir", "latent_dir"))

__all__ = [
    "NUM_CLASSES", "digits_arrays", "digits_builder_class", "scale_grey_levels",
    "split_indices", "Preprocess", "make_dataset", "resize_bilinear", "data_source",
    "load_builder", "prepare_digits", "resolve_data_dir", "CaptionedFolder", "CaptionedImageSource",
    "captioned_dataset", "load_image", "read_captioned_folder",
]
