"""Hub repo ids (unigen/hub.py): `from_pretrained("org/name", subfolder=, revision=)` reads the
Hugging Face hub cache, laid out here in tmp_path exactly as huggingface_hub lays it out
(`models--org--name/{blobs,refs,snapshots}`, snapshot files linked to blobs), offline."""

import hashlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import unigen
from unigen import hub
from unigen.errors import WeightError

REPO = "someorg/tiny-dit"
COMMIT_A = "a" * 8 + "0123456789abcdef0123456789abcdef"  # 40 hex digits, as commits are
COMMIT_B = "b" * 8 + "0123456789abcdef0123456789abcdef"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_dit(folder, seed):
    """A random-weight diffusers DiTTransformer2DModel saved to `folder` (the tests that read a
    cached model need torch + diffusers; the id rules, selection and errors do not)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, patch_size=2,
        sample_size=8, num_embeds_ada_norm=10, norm_type="ada_norm_zero", attention_bias=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the default init zeroes the adaLN-zero gates: the output would not show the weights
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(str(folder))


def add_snapshot(repo, commit, source):
    """Put the files of folder `source` into snapshots/<commit>/transformer/ as huggingface_hub does:
    the content in blobs/<hash>, the snapshot entry a relative link to it."""
    for name in sorted(os.listdir(source)):
        data = open(os.path.join(source, name), "rb").read()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        entry = repo / "snapshots" / commit / "transformer" / name
        entry.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, entry.parent), entry)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """(cache folder, {commit: the plain folder its transformer came from}): main -> A, tag v1 -> B."""
    tmp = tmp_path_factory.mktemp("hub")
    folders = {COMMIT_A: tmp / "plain_a", COMMIT_B: tmp / "plain_b"}
    cache = tmp / "cache"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    for seed, (commit, folder) in enumerate(folders.items()):
        tiny_dit(folder, seed)
        add_snapshot(repo, commit, folder)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_A)  # no newline, like huggingface_hub writes it
    (repo / "refs" / "v1").write_text(COMMIT_B)
    return cache, folders


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def outputs(model):
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(2, 8, 8, 4).astype(np.float32))
    return np.asarray(model(x, jnp.asarray([3, 800]), jnp.asarray([1, 10])))


def test_ids_load_like_their_folders(offline_cache):
    cache, folders = offline_cache
    want = {commit: outputs(unigen.from_pretrained(str(folder))) for commit, folder in folders.items()}
    assert np.abs(want[COMMIT_A] - want[COMMIT_B]).max() > 1e-2  # the two revisions differ
    cases = [  # (kwargs, the commit they name)
        (dict(), COMMIT_A),  # the repo root: its one loadable component
        (dict(subfolder="transformer"), COMMIT_A),
        (dict(subfolder="transformer", revision="v1"), COMMIT_B),  # a second ref (a tag)
        (dict(subfolder="transformer", revision=COMMIT_B), COMMIT_B),  # a commit hash
        (dict(revision=COMMIT_A), COMMIT_A),
    ]
    for kwargs, commit in cases:
        np.testing.assert_array_equal(outputs(unigen.from_pretrained(REPO, **kwargs)), want[commit], err_msg=kwargs)
    snap = cache / ("models--" + REPO.replace("/", "--")) / "snapshots"
    assert hub.resolve(REPO, subfolder="transformer", revision="v1") == str(snap / COMMIT_B / "transformer")
    assert hub.resolve(REPO) == str(snap / COMMIT_A)


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_ids_are_one_line_errors(offline_cache):
    cache = str(offline_cache[0])
    with pytest.raises(WeightError) as e:
        unigen.from_pretrained("someorg/missing-model")
    msg = one_line(e)
    assert "someorg/missing-model" in msg and cache in msg and "HF_HUB_OFFLINE" in msg, msg
    with pytest.raises(WeightError) as e:  # a revision the cache does not hold
        unigen.from_pretrained(REPO, revision="v2")
    msg = one_line(e)
    assert REPO in msg and "'v2'" in msg and cache in msg and "HF_HUB_OFFLINE" in msg, msg
    with pytest.raises(WeightError) as e:  # a cached snapshot without the subfolder
        unigen.from_pretrained(REPO, subfolder="vae")
    msg = one_line(e)
    assert "'vae'" in msg and COMMIT_A in msg and "HF_HUB_OFFLINE" in msg, msg


def test_paths_that_are_not_ids_keep_their_errors(offline_cache, tmp_path, monkeypatch):
    with pytest.raises(WeightError, match=r"^no file or folder at \S*nowhere$"):
        unigen.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(WeightError, match=r"^no file or folder at \S*transformer \(subfolder='transformer'\)$"):
        unigen.from_pretrained(str(tmp_path), subfolder="transformer")
    with pytest.raises(WeightError, match="revision='v1' .* local path"):
        unigen.from_pretrained(str(offline_cache[1][COMMIT_A]), revision="v1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someorg" / "tiny-dit").mkdir(parents=True)  # an existing local path wins over the id
    with pytest.raises(WeightError, match="not a recognised model folder"):
        unigen.from_pretrained(REPO)


def test_what_is_an_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "dit").mkdir(parents=True)
    for name in ("org/name", "facebook/DiT-XL-2-256", "a_b/c.d-e"):
        assert hub.is_repo_id(name), name
    for name in ("runs/dit", "name", "a/b/c", "/abs/x", "./x", "../x", "~/x", "org/na--me", "org/x.git", ""):
        assert not hub.is_repo_id(name), name
    from pathlib import Path
    assert not hub.is_repo_id(Path("org/name"))


def test_download_selection():
    files = ["README.md", "model_index.json", "scheduler/scheduler_config.json",
             "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
             "transformer/diffusion_pytorch_model.bin", "transformer/diffusion_pytorch_model.fp16.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.bin",
             "text_encoder/config.json", "text_encoder/model.fp16-00001-of-00002.safetensors",
             "text_encoder/model.fp16-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json",
             "tf_model.h5", "flax_model.msgpack", "onnx/model.onnx", "openvino/openvino_model.bin",
             "openvino/openvino_model.xml", "DiT-XL-2-256x256.pt"]
    assert hub.select(files, "transformer") == ["transformer/config.json",
                                                "transformer/diffusion_pytorch_model.safetensors"]
    assert hub.select(files, "vae/") == ["vae/config.json", "vae/diffusion_pytorch_model.bin"]
    assert hub.select(files, "text_encoder") == [  # only variants: those are the weights
        "text_encoder/config.json", "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json"]
    assert hub.select(files, "DiT-XL-2-256x256.pt") == ["DiT-XL-2-256x256.pt"]  # a file named by subfolder=
    assert hub.select(files, "unet") == []
    whole = hub.select(files)
    assert "DiT-XL-2-256x256.pt" in whole and "scheduler/scheduler_config.json" in whole
    assert not [f for f in whole if f.endswith((".h5", ".msgpack", ".onnx")) or f == "openvino/openvino_model.bin"]


def test_download_when_online(hub_cache, tmp_path, monkeypatch):
    """A cache miss with the network allowed lists the revision, then downloads only the files the
    load reads, naming the branch (so huggingface_hub records refs/<branch> for the next offline load)."""
    import huggingface_hub
    from huggingface_hub.errors import DryRunError
    from huggingface_hub.file_download import DryRunFileInfo

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls, real = [], huggingface_hub.snapshot_download
    listing = ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
               "transformer/diffusion_pytorch_model.bin", "vae/config.json"]

    def fake(repo_id, **kw):
        if kw.get("local_files_only"):
            return real(repo_id, **kw)  # the real cache lookup: a miss
        calls.append(kw)
        if kw.get("dry_run"):
            return [DryRunFileInfo(commit_hash=COMMIT_A, file_size=1, filename=f, local_path="", is_cached=False,
                                   will_download=True) for f in listing]
        return str(hub_cache[0] / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT_A)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache[0]))
    unigen.from_pretrained(REPO, revision="v1")
    assert calls == []  # cached: the network is not asked, even when allowed
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    model = unigen.from_pretrained(REPO, subfolder="transformer", revision="main")
    np.testing.assert_array_equal(outputs(model), outputs(unigen.from_pretrained(str(hub_cache[1][COMMIT_A]))))
    assert [c.get("dry_run", False) for c in calls] == [True, False]
    assert calls[1]["revision"] == "main" and calls[1]["cache_dir"] == str(tmp_path / "empty")
    assert sorted(calls[1]["allow_patterns"]) == ["transformer/config.json",
                                                  "transformer/diffusion_pytorch_model.safetensors"]

    def unreachable(repo_id, **kw):  # what huggingface_hub raises when the hub cannot be reached
        if kw.get("local_files_only"):
            return real(repo_id, **kw)
        raise DryRunError("Dry run cannot be performed") from ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(WeightError) as e:
        unigen.from_pretrained(REPO)
    msg = one_line(e)
    assert REPO in msg and str(tmp_path / "empty") in msg and "Name or service not known" in msg, msg
    assert "HF_HUB_OFFLINE=1" in msg, msg


@pytest.mark.parametrize("cli", ["convert", "sample"])
def test_cli_missing_id_exits_2_with_one_error_line(cli, tmp_path):
    cmd = {"convert": [sys.executable, "-m", "unigen.convert", "someorg/missing-model", str(tmp_path / "out")],
           "sample": [sys.executable, os.path.join(ROOT, "infer", "sample.py"), "--pretrained",
                      "someorg/missing-model", "--out", str(tmp_path / "s.npz")]}[cli]
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONSAFEPATH="1",
               JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "someorg/missing-model" in lines[0] and str(tmp_path / "cache") in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_import_does_not_load_huggingface_hub():
    code = "import sys, unigen, unigen.pretrained, unigen.text; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONSAFEPATH="1"), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
