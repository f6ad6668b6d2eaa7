"""Reading the files a user hands unigen (config.json, model_index.json, a work dir's config, ...):
the one place where a library's failure to read a file becomes a named `UnigenError` that gives the
path and what to do. A damaged input is an expected failure (the command-line entry points print it
as one `error:` line); only the exceptions of reading are translated, so a bug keeps its traceback.
Weight files go through `unigen.convert.weights.read_weights`, which phrases its errors here too.
"""

from __future__ import annotations

import json
import os

from unigen.errors import UnigenError, WeightError

# What to do about a file that exists but cannot be parsed, unless the caller knows better.
DAMAGED = "the file is damaged or incomplete: download or write it again"


def size_note(path: str) -> str:
    """'(N bytes)' for the message about a file that may be truncated; '' when it cannot be told."""
    try:
        return f"({os.path.getsize(path)} bytes)"
    except OSError:
        return ""


def unreadable(path: str, e: OSError, error: type[UnigenError] = WeightError) -> UnigenError:
    """The error for an `OSError` raised while opening or reading `path` (missing, a folder,
    no permission, an I/O error)."""
    if isinstance(e, FileNotFoundError):
        return error(f"no file at {path}")
    if isinstance(e, IsADirectoryError) or os.path.isdir(path):  # safetensors' OSError for a folder has no errno
        return error(f"{path} is a folder; a file was expected there")
    if isinstance(e, PermissionError):
        return error(f"{path} cannot be read (permission denied): check its permissions")
    return error(f"{path} cannot be read ({e.strerror or type(e).__name__})")


def read_json(path: str, *, error: type[UnigenError] = WeightError, expect: type = dict,
              optional: bool = False, missing: str | None = None, fix: str = DAMAGED):
    """The JSON value in the file at `path`, which must be an `expect` (an object by default).

    `optional`: an absent file reads as an empty `expect` (`{}`); `missing`: the message of the
    `error` for an absent file (what the folder is not without it), instead of "no file at path".
    Any failure to read the file or parse it, or a value of another type, raises `error` naming
    the path, followed by `fix`."""
    if (optional or missing is not None) and not os.path.exists(path):
        if optional:
            return expect()
        raise error(missing)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise unreadable(path, e, error) from None
    if not data.strip():
        raise error(f"{path} is empty {size_note(path)}; {fix}")
    try:
        value = json.loads(data)  # bytes: json detects UTF-8/16/32 as the JSON standard allows
    except UnicodeDecodeError as e:
        raise error(f"{path} is not a JSON text file (byte {e.start} is not UTF-8 text); {fix}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}) "
                    f"{size_note(path)}; {fix}") from None
    except RecursionError:
        raise error(f"{path} is not a config file (JSON nested too deeply to read); {fix}") from None
    if not isinstance(value, expect):
        kind = {dict: "an object of fields", list: "a list"}.get(expect, expect.__name__)
        raise error(f"{path} holds a JSON {_json_type(value)}, not {kind}; {fix}")
    return value


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
