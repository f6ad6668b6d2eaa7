"""Expected failures: one exception family whose messages name the file or field and say what
to do. The command-line entry points print these as one `error:` line and exit with status 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UnigenError(Exception):
    """A failure the user can act on (bad config, weights, checkpoint, data or samples)."""


class ConfigError(UnigenError, ValueError):
    """A config field is invalid (the message names `config.<field>` and the fix)."""


class WeightError(UnigenError, ValueError):
    """A weight file or model folder does not fit the model (names the key and both shapes)."""


class CheckpointError(UnigenError, RuntimeError):
    """A work dir's checkpoints cannot be used for this run."""


class DataError(UnigenError, ValueError):
    """A data set is missing, unprepared or not readable as asked."""


class DataNotFound(DataError, FileNotFoundError):
    """A data set is not prepared where it was looked for (the message says how to prepare it)."""


class SamplesError(UnigenError, ValueError):
    """A samples file cannot be evaluated."""
