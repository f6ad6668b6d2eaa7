"""What the command lines (infer/sample.py, infer/evaluate.py, `python -m unigen.convert`) accept.

A value the code could only fail on later (`--steps 0`, `--batch-size -1`, `--guided-channels abc`)
or turn into a silent wrong result (`--cfg-scale nan` samples all-NaN images) is refused while the
command line is parsed, naming the flag and the valid range; a destination that cannot be written
is refused before any model is read (`check_output_file`, `check_output_folder`), so no sampling or
evaluation work is lost to it. Both print one `error:` line and exit with status 2, as every
expected failure of these commands does (unigen/errors.py). It sits beside the sub-packages, not in
unigen/infer/, because `python -m unigen.convert` uses it and training (which infer imports) imports convert.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

from unigen.errors import ConfigError

SEED_LIMIT = 2 ** 32  # jax.random.PRNGKey and numpy take seeds below 2**32; larger ones overflow


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: argparse prints the whole usage (a dozen lines for
    infer/sample.py) before `prog: error: ...`; here the error alone, in the form of the commands'
    other expected failures, with the exit status argparse uses (2)."""

    def error(self, message):
        self.exit(2, f"error: {message} ({self.prog} --help lists the options)\n")


def int_at_least(low: int, below: int | None = None):
    """An argparse type: an int >= low (and < below when given)."""
    valid = f"an int >= {low}" if below is None else f"an int in {low}..{below - 1}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int; give {valid}") from None
        if value < low or (below is not None and value >= below):
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {valid}")
        return value
    return parse


def finite_float(low: float | None = None):
    """An argparse type: a finite float (>= low when given). float() reads 'nan', 'inf' and
    '1e999' (= inf); each would pass a range check (NaN compares False both ways) and poison
    every sample."""
    valid = "a finite number" + ("" if low is None else f" >= {low:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {valid}") from None
        if not math.isfinite(value) or (low is not None and value < low):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; give {valid}")
        return value
    return parse


def boolean(text: str) -> bool:
    """An argparse type: true/false (also yes/no, 1/0), as a config's bool field is written."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give true or false")
    return value


def guided_channels(text: str) -> int | str:
    """'dit' (the official DiT's first 3 channels), -1 (all), or a positive channel count; the
    values unigen.sampling.Generator and diffusion.guidance take."""
    if text == "dit":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == -1 or value >= 1:
        return value
    raise argparse.ArgumentTypeError(f"{text!r}: give 'dit' (the first 3 channels, as the official DiT), "
                                     f"-1 (all channels) or a positive channel count")


def class_list(text: str) -> list[int]:
    """'207,360' -> [207, 360]: class ids >= 0 (the model's upper bound is checked once it is read)."""
    try:
        ids = [int(c) for c in text.split(",")]
    except ValueError:
        ids = None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated class ids >= 0, e.g. 0,5,9")
    return ids


def _probe_writable(folder: str, flag: str, path: str) -> None:
    """Write and remove a temp file in `folder`, or its nearest existing parent when it does not exist
    yet (it is created when the output is written): permissions, read-only file systems and ACLs
    all show, where os.access misses some (and says yes to root)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{flag} {path}: {existing} is a file, so the folder {folder} cannot be created; "
                          f"choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".unigen-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({e.strerror}); choose a writable "
                          f"location") from None


def check_output_file(path: str, flag: str) -> None:
    """Raise ConfigError unless `path` can be written as a file; creates nothing."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path} exists and is not writable; choose another path")
    _probe_writable(os.path.dirname(os.path.abspath(path)), flag, path)


def check_output_folder(path: str, flag: str) -> None:
    """Raise ConfigError unless `path` can be written as a folder; creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file; give a folder path")
    _probe_writable(path, flag, path)
