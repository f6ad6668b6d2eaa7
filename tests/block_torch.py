"""A pytest plugin (`-p block_torch`) that makes the reference frameworks unimportable, as on a
machine without the test extra: tests/test_packaging.py collects the suite under it."""

import importlib.abc
import sys

BLOCKED = ("torch", "diffusers", "transformers", "sentence_transformers")


class _Absent(importlib.abc.MetaPathFinder):
    """Behave as a machine without torch: importing it (or what needs it) finds nothing."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None


sys.meta_path.insert(0, _Absent())
