"""Python config files (big_vision style) and overrides, for notebooks, tests and scripts.

A config file defines `get_config()` returning an `ml_collections.ConfigDict`. The command line
reads it with `ml_collections.config_flags` (unigen/training/cli.py); here the same in Python:
`load_config_file(path)`, then `apply_override(cfg, "train.steps", 100)` or the pairs of
`parse_overrides(["--config.train.steps=100"])` (values parsed as Python literals, else kept
as strings). Unknown keys are errors: a typo never silently trains something else.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"unigen_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    return module.get_config()


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(cfg: ml_collections.ConfigDict, dotted: str, value) -> None:
    """Set `cfg.<dotted>` = value; the key must exist, and ints widen to floats."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, p in enumerate(parents):
        if p not in node:
            raise ValueError(f"--config.{dotted}: no field {'.'.join(parents[:i + 1])!r} in the config")
        node = node[p]
    if leaf not in node:
        raise ValueError(f"--config.{dotted}: no field {dotted!r} in the config "
                         f"(fields here: {sorted(node.keys())})")
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ValueError(f"--config.{dotted}={value!r}: expected a {type(old).__name__} ({e})") from e


def parse_overrides(argv: list[str]) -> tuple[list[tuple[str, object]], list[str]]:
    """Split `--config.a.b=v` / `--config.a.b v` pairs from the other arguments."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
            overrides.append((key, parse_value(value)))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))
