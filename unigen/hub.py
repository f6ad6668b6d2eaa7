"""Hugging Face hub ids: `resolve("org/name", subfolder=..., revision=...)` -> a local path.

The one place that knows huggingface_hub and its cache layout (`models--org--name/refs/<branch>`
holding a commit hash, `snapshots/<hash>/...`); `from_pretrained`, the command-line tools, the
text-encoder resolver and the pipelines call it. huggingface_hub (installed with `tokenizers`) is
imported only when a string looks like an id, so `import unigen` does not pay for it.

A string is an id only if no file or folder has that path and it has huggingface_hub's repo-id
shape `org/name`. An id is looked up in the local cache first (no network); a revision missing
there is downloaded with `snapshot_download` when the network allows, restricted to the files a
load reads (the subfolder's configs and one weight format, see `select`); offline
(HF_HUB_OFFLINE=1, or the hub unreachable) a missing revision is a one-line WeightError naming
the repo, the cache folder and HF_HUB_OFFLINE.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re

from unigen.errors import WeightError

__all__ = ["cache_dir", "is_repo_id", "offline", "resolve", "select", "snapshot"]

# Weight formats of other frameworks, which no unigen loader reads (TF/Keras, Flax msgpack, ONNX,
# rust-bert, TFLite, GGUF, Core ML, Lightning): never downloaded.
FOREIGN_SUFFIXES = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".gguf", ".mlmodel", ".ckpt")
# Torch pickles: unigen reads them only where a folder has no safetensors (unigen/convert/weights.py).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# diffusers' weight variants (`diffusion_pytorch_model.fp16.safetensors`, sharded
# `model.fp16-00001-of-00002.safetensors`): the plain file is the one a load reads.
VARIANTS = ("fp16", "bf16", "fp32", "fp8", "non_ema", "ema")
_VARIANT = re.compile(r"\.(%s)(-\d+-of-\d+)?\.[^.]+$" % "|".join(VARIANTS))


def cache_dir() -> str:
    """The hub cache folder huggingface_hub uses: $HF_HUB_CACHE, else $HF_HOME/hub, else its default."""
    from huggingface_hub import constants

    # huggingface_hub reads these variables once, when it is first imported (often by diffusers or
    # transformers, before a notebook or a test sets them); a later setting counts here too.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return constants.HF_HUB_CACHE


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (also re-read now, like `cache_dir`)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return constants.is_offline_mode()


def is_repo_id(name) -> bool:
    """`name` is not an existing local path and is shaped like a hub repo id `org/name`."""
    if not isinstance(name, str) or name.count("/") != 1 or os.path.exists(os.path.expanduser(name)):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:  # rejects "./x", "~/x", "/x", "a--b", "a..b", "x.git", ...
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve(path_or_id, *, subfolder: str | None = None, revision: str | None = None) -> str:
    """The local path of `path_or_id` (joined with `subfolder`): a local file or folder as it is,
    a hub id's cached (else downloaded) snapshot. A missing path is a WeightError."""
    name = os.fspath(path_or_id)
    path = os.path.expanduser(name)
    where = f" (subfolder={subfolder!r})" if subfolder else ""
    if not is_repo_id(path_or_id):  # a pathlib.Path is never an id
        if revision is not None:
            raise WeightError(f"revision={revision!r} selects a version of a hub repo id (org/name); "
                              f"{name} is a local path: drop revision=")
        target = os.path.join(path, subfolder) if subfolder else path
        if not os.path.exists(target):
            raise WeightError(f"no file or folder at {target}{where}")
        return target
    try:
        folder = snapshot(name, subfolder=subfolder, revision=revision)
    except WeightError as e:  # the string may have been meant as a local path: say both
        raise WeightError(f"no file or folder at {os.path.abspath(path)}, and {e}") from None
    return os.path.join(folder, _scope(subfolder)) if subfolder else folder


def select(files, subfolder: str | None = None) -> list[str]:
    """The files of a repo listing that a load of `subfolder` (else of the whole repo) reads: all
    but other frameworks' weights, and in each folder one weight format: the plain safetensors,
    else the variant (fp16, ...) safetensors, else the plain torch pickles, else the variant ones.
    A `subfolder` naming one file selects that file."""
    files = list(files)
    if subfolder:
        scope = _scope(subfolder)
        if scope in files:
            return [scope]
        files = [f for f in files if f.startswith(scope + "/")]
    by_folder: dict[str, list[str]] = {}
    for f in files:
        if not f.lower().endswith(FOREIGN_SUFFIXES):
            by_folder.setdefault(posixpath.dirname(f), []).append(f)
    keep = []
    for names in by_folder.values():
        tensors = [f for f in names if f.endswith(".safetensors")]
        # a .bin that is not a torch state dict (OpenVINO's openvino_model.bin) is no weight file of ours
        pickles = [f for f in names if f.endswith((".pt", ".pth")) or
                   (f.endswith(".bin") and "pytorch_model" in posixpath.basename(f))]
        weights = ([f for f in tensors if not _VARIANT.search(f)] or tensors or
                   [f for f in pickles if not _VARIANT.search(f)] or pickles)
        keep += [f for f in names if not f.endswith((".safetensors",) + PICKLE_SUFFIXES)] + weights
    return sorted(keep)


def snapshot(repo_id: str, *, subfolder: str | None = None, revision: str | None = None) -> str:
    """The snapshot folder of hub repo `repo_id` at `revision` (a branch, tag or commit hash;
    default main) that holds `subfolder`: the cached one, else one downloaded now."""
    import huggingface_hub
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    revision = revision or "main"
    cache = cache_dir()
    scope = _scope(subfolder) if subfolder else None
    what = f"hub repo {repo_id!r} (revision {revision!r}{', subfolder ' + repr(scope) if scope else ''})"
    try:  # the cache first; the ignored patterns are the files `select` may have left out
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache, local_files_only=True,
            allow_patterns=[scope, scope + "/*"] if scope else None, ignore_patterns=_maybe_skipped())
        if os.path.exists(os.path.join(folder, scope or "")):
            return folder
        missing = f"its cached snapshot {folder} has no {scope!r}"
    except IncompleteSnapshotError as e:  # huggingface_hub's listing of the commit names files not there
        missing = f"its cached snapshot {e.snapshot_path} is incomplete"
    except LocalEntryNotFoundError:  # no such ref or snapshot
        missing = f"it is not in the Hugging Face hub cache at {cache}"
    download = f"hf download {repo_id}" + (f" --revision {revision}" if revision != "main" else "")
    fix = (f"fill the cache where the network is reachable (`{download}`) and point HF_HUB_CACHE "
           f"at it, or pass a local folder")
    if offline():
        raise WeightError(f"{what}: {missing}, and HF_HUB_OFFLINE=1 forbids downloading it (unset HF_HUB_OFFLINE "
                          f"to download); {fix}")
    try:
        listing = huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache, dry_run=True)
        wanted = select([f.filename for f in listing], subfolder)
        if not wanted:
            top = sorted({f.filename.split("/")[0] for f in listing})
            raise WeightError(f"{what}: the repo has no {scope!r}; it holds {top}" if scope else
                              f"{what}: the repo holds no file a unigen load reads ({top})")
        # the branch or tag (not the listing's commit) is passed so that huggingface_hub writes refs/<name>
        # and the next lookup finds it offline
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                                   allow_patterns=[glob.escape(f) for f in wanted])
    except WeightError:
        raise
    except Exception as e:
        if not _is_hub_failure(e):
            raise
        raise WeightError(f"{what}: {missing}, and downloading it failed: {_reason(e)} "
                          f"(with no network, set HF_HUB_OFFLINE=1 to skip the attempt); {fix}") from None
    return folder


def _scope(subfolder: str) -> str:
    return subfolder.replace(os.sep, "/").strip("/")


def _maybe_skipped() -> list[str]:
    """Patterns of every file `select` may leave out (so a partial download counts as cached)."""
    variants = [f"*.{v}.*" for v in VARIANTS] + [f"*.{v}-*" for v in VARIANTS]
    return [f"*{s}" for s in FOREIGN_SUFFIXES + PICKLE_SUFFIXES] + variants


def _is_hub_failure(e: Exception) -> bool:
    """An error of the download itself (network, hub answer, cache disk), not a bug here."""
    from huggingface_hub.errors import DryRunError, EntryNotFoundError, HfHubHTTPError

    return isinstance(e, (OSError, HfHubHTTPError, EntryNotFoundError, DryRunError)) or \
        type(e).__module__.split(".")[0].startswith("httpx")


def _reason(e: Exception) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, GatedRepoError):
        return "the repo is gated (accept its terms on the hub, then `hf auth login`)"
    if isinstance(e, RepositoryNotFoundError):
        return "the hub has no such repo (or it is private: `hf auth login`)"
    if isinstance(e, RevisionNotFoundError):
        return "the repo has no such revision"
    shown = e.__cause__ or e  # DryRunError / LocalEntryNotFoundError wrap the connection error
    return f"{type(shown).__name__}: {_first_line(shown)}"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
