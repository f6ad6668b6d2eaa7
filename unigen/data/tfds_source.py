"""Find a prepared TFDS data set on disk and open it as a random-access source for grain.

No TensorFlow and no network at run time: prepared data sets are opened from their files
(`builder_from_files` reads `dataset_info.json` / `features.json` in the data_dir) and
read through `as_data_source`, which needs the `array_record` file format. The embedded
`digits` data set prepares itself on first use from the copy inside scikit-learn.

data_dir: the `data_dir` argument, else env `TFDS_DATA_DIR` (read at call time), else
TFDS's default (~/tensorflow_datasets).
"""

from __future__ import annotations

import contextlib
import io
import os

from unigen.errors import DataError, DataNotFound

EMBEDDED = ("digits",)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    if data_dir is not None:
        return os.fspath(data_dir)
    if os.environ.get("TFDS_DATA_DIR"):
        return os.environ["TFDS_DATA_DIR"]
    from tensorflow_datasets.core import constants

    return os.fspath(constants.DATA_DIR)


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """Hold an exclusive lock on `lock_path` (POSIX flock; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing to lock with
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_digits(data_dir: str | os.PathLike | None = None):
    """The `digits` builder in `data_dir`, written (array_record) if not there yet.

    Safe to call from several processes at once (a multi-process run on one machine with an
    empty data dir): without the lock, every process but the first failed when TFDS renamed
    its finished directory onto the one another process had just written."""
    import tensorflow_datasets as tfds

    from unigen.data.digits import digits_builder_class

    data_dir = resolve_data_dir(data_dir)
    make = lambda: digits_builder_class()(data_dir=data_dir, file_format="array_record")
    builder = make()
    if builder.is_prepared():  # no lock file needed: a prepared dir may be read-only
        return builder
    os.makedirs(data_dir, exist_ok=True)
    with _exclusive(os.path.join(data_dir, ".unigen_digits.lock")):
        builder = make()  # another process may have finished while we waited
        if not builder.is_prepared():
            # Nothing to download; never ask GCS for a pre-built copy either. TFDS' "Downloading
            # ... Unknown size" and shuffling bars describe a 2-second local write: hidden.
            tfds.disable_progress_bar()
            print(f"preparing the digits data set in {data_dir} (once)", flush=True)
            with contextlib.redirect_stdout(io.StringIO()):  # its "Downloading ... Unknown size" lines
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def _not_prepared_message(name: str, data_dir: str) -> str:
    # One line, as every expected failure of the command lines is (README, "Reliability").
    return (f"TFDS data set {name!r} is not prepared in data_dir={data_dir!r} (unigen never downloads at run time): "
            f"prepare it once with `tfds build {name} --data_dir={data_dir} --file_format=array_record` (or "
            f"tfds.builder({name!r}, data_dir=..., file_format='array_record').download_and_prepare(); building "
            f"most image sets needs TensorFlow, reading does not; imagenet2012 also needs its tar files in "
            f"{data_dir}/downloads/manual), or point data_dir / TFDS_DATA_DIR at where it was prepared")


def load_builder(name: str, data_dir: str | os.PathLike | None = None):
    """A prepared builder for `name` (e.g. 'mnist', 'cifar10:3.0.2', 'imagenet2012').

    Raises DataNotFound (a FileNotFoundError) saying how to prepare the data set when it is not
    on disk, and DataError when it is on disk in a format grain cannot read (not array_record).
    """
    if not isinstance(name, str) or not name:
        raise DataError(f"data set name must be a non-empty string, got {name!r}")
    if name.split(":")[0].split("/")[0] in EMBEDDED:
        return prepare_digits(data_dir)
    from tensorflow_datasets.core import read_only_builder, registered

    data_dir = resolve_data_dir(data_dir)
    try:
        # Reads only files under data_dir: no generation code, no GCS, no download.
        builder = read_only_builder.builder_from_files(name, data_dir=data_dir)
    except registered.DatasetNotFoundError:
        raise DataNotFound(_not_prepared_message(name, data_dir)) from None
    fmt = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if fmt != "array_record":
        raise DataError(
            f"TFDS data set {name!r} in {builder.data_dir} is stored as {fmt!r}; grain's "
            f"random access needs array_record. Convert it once with\n"
            f"  tfds convert_format --dataset_version_dir={builder.data_dir} "
            f"--out_file_format=array_record\n"
            f"or rebuild it with --file_format=array_record.")
    return builder


def data_source(name: str, split: str, data_dir: str | os.PathLike | None = None):
    """Random-access source (len + __getitem__ -> dict of numpy) for `split` of `name`."""
    builder = load_builder(name, data_dir)
    # Sub-splits such as 'train[:90%]' are fine; check the base name only.
    if split.split("[")[0] not in builder.info.splits:
        raise DataError(f"split {split!r} not in {name!r}; available: "
                         f"{sorted(builder.info.splits.keys())}")
    return builder.as_data_source(split=split)
