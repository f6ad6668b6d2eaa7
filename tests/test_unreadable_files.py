"""Unreadable input files are expected failures: a truncated, empty or random-bytes weight file, a
damaged config.json (a diffusers folder's, a work dir's), a damaged samples .npz, a text-encoder path
that holds another kind of model. Each reaches the user, through the real entry points, as a named
UnigenError giving the path and what to do (one `error:` line and exit status 2 from a command),
never a library traceback; a bug underneath still raises as itself (unigen/files.py)."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from unigen.errors import CheckpointError, ConfigError, WeightError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.depth=1", "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.train.batch_size=16", "--config.train.steps=2", "--no-progress"]


def _damage(path, how):
    data = open(path, "rb").read()
    damaged = {"truncated": data[:len(data) // 2], "empty": b"",
               "random": np.random.default_rng(0).bytes(4096)}[how]
    with open(path, "wb") as f:
        f.write(damaged)


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return str(dst)


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    """A random-weight diffusers DiTTransformer2DModel folder."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("dit") / "dit"
    diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, patch_size=2,
        sample_size=8, num_embeds_ada_norm=10, norm_type="ada_norm_zero").save_pretrained(str(folder))
    return str(folder)


def _weights(folder):
    return os.path.join(folder, "diffusion_pytorch_model.safetensors")


def _one_error_line(rc, err, *needles):
    """A command's refusal: status 2, no traceback, at most 3 lines, one `error:` line holding `needles`."""
    lines = err.strip().splitlines()
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and len(lines) <= 3, err[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), (needles, err[-3000:])
    return errors[0]


def _train_main(monkeypatch, config, workdir, *args, tiny=TINY):
    # sys.argv is not this command line: main(argv) must read its `--config.*` overrides from argv
    from unigen.training.cli import main
    argv = ["--config", os.path.join(ROOT, "configs", config), "--workdir", str(workdir), *tiny, *args]
    monkeypatch.setattr(sys, "argv", ["pytest"])
    return main(argv)


# ---- weight files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_damaged_safetensors_in_a_folder_or_alone_is_a_weight_error(dit, tmp_path, how):
    import unigen
    folder = _copy(dit, tmp_path / "dit")
    _damage(_weights(folder), how)
    with pytest.raises(WeightError, match="is not a readable safetensors file") as e:
        unigen.from_pretrained(folder)
    assert _weights(folder) in str(e.value) and "download or write it again" in str(e.value)
    single = tmp_path / "dit.safetensors"  # a single weight file (the official DiT file loader)
    single.write_bytes(open(_weights(dit), "rb").read())
    _damage(single, how)
    with pytest.raises(WeightError, match=f"{single} is not a readable safetensors file"):
        unigen.from_pretrained(str(single))


@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_damaged_torch_checkpoint_is_a_weight_error(tmp_path, how):
    torch = pytest.importorskip("torch")
    from unigen.convert.weights import read_weights
    path = tmp_path / "ckpt.pt"
    torch.save({"x_embedder.proj.weight": torch.zeros(64, 4, 2, 2)}, str(path))
    _damage(path, how)
    with pytest.raises(WeightError, match=f"{path} cannot be read as a PyTorch checkpoint"):
        read_weights(str(path))


def test_a_folder_named_like_a_weight_file_is_a_weight_error(tmp_path):
    from unigen.convert.weights import read_weights
    (tmp_path / "w.safetensors").mkdir()
    with pytest.raises(WeightError, match="w.safetensors is a folder"):
        read_weights(str(tmp_path / "w.safetensors"))


def test_a_bug_under_the_reader_keeps_its_traceback(dit, monkeypatch):
    """Only reading failures are translated: anything else raised underneath is a bug and stays itself."""
    import safetensors.numpy

    from unigen.convert.weights import read_weights

    def broken(path):
        raise TypeError("a bug")
    monkeypatch.setattr(safetensors.numpy, "load_file", broken)
    with pytest.raises(TypeError, match="a bug"):
        read_weights(_weights(dit))


def test_convert_of_damaged_weights_prints_one_error_line(dit, tmp_path, capsys):
    from unigen.convert.__main__ import main
    folder = _copy(dit, tmp_path / "dit")
    _damage(_weights(folder), "truncated")
    rc = main([folder, str(tmp_path / "out")])
    _one_error_line(rc, capsys.readouterr().err, _weights(folder), "not a readable safetensors file")
    assert not (tmp_path / "out").exists()


def test_convert_of_a_random_weight_file_as_a_subprocess(tmp_path):
    single = tmp_path / "DiT-XL-2-256.safetensors"
    single.write_bytes(np.random.default_rng(1).bytes(1000))
    out = subprocess.run([sys.executable, "-m", "unigen.convert", str(single), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    _one_error_line(out.returncode, out.stderr, str(single), "not a readable safetensors file")


def test_damaged_init_from_weights_stop_training_with_one_error_line(dit, tmp_path, monkeypatch, capsys):
    folder = _copy(dit, tmp_path / "dit")
    _damage(_weights(folder), "random")
    rc = _train_main(monkeypatch, "dit_digits.py", tmp_path / "run", f"--config.init_from={folder}")
    _one_error_line(rc, capsys.readouterr().err, _weights(folder), "not a readable safetensors file")
    assert not (tmp_path / "run").exists()  # read before the first write: no work dir to trap the rerun


def test_damaged_latent_encoder_weights_stop_training_with_one_error_line(tmp_path, monkeypatch, capsys):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("torch")
    vae = str(tmp_path / "vae")
    diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                            latent_channels=4, norm_num_groups=4, sample_size=8).save_pretrained(vae)
    _damage(_weights(vae), "truncated")
    rc = _train_main(monkeypatch, "lightningdit_digits.py", tmp_path / "run", f"--config.data.latent_encoder={vae}")
    _one_error_line(rc, capsys.readouterr().err, "config.data.latent_encoder", _weights(vae),
                    "not a readable safetensors file")
    assert not (tmp_path / "run").exists()


# ---- config.json -------------------------------------------------------------------------------------

DAMAGED_JSON = {
    "truncated": (b'{"_class_name": "DiTTransf', "is not valid JSON (Unterminated string"),
    "empty": (b"", "is empty (0 bytes)"),
    "list": (b"[1, 2]", "holds a JSON list, not an object of fields"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00", "is not a JSON text file (byte 0 is not UTF-8 text)"),
}


@pytest.mark.parametrize("how", sorted(DAMAGED_JSON))
def test_damaged_config_json_of_a_diffusers_folder(dit, tmp_path, capsys, how):
    import unigen
    from unigen.convert.__main__ import main
    folder = _copy(dit, tmp_path / "dit")
    data, message = DAMAGED_JSON[how]
    (tmp_path / "dit" / "config.json").write_bytes(data)
    with pytest.raises(WeightError, match="config.json") as e:
        unigen.from_pretrained(folder)
    assert message in str(e.value) and os.path.join(folder, "config.json") in str(e.value)
    rc = main([folder, str(tmp_path / "out")])
    _one_error_line(rc, capsys.readouterr().err, os.path.join(folder, "config.json"), message)


@pytest.fixture
def workdir(tmp_path):
    """A work dir as the trainer leaves it after its first save: config.json and checkpoints/ (its
    config is what the resume and the sampler read first, so no checkpoint is needed to reach it)."""
    from unigen.training.checkpoint import save_config
    from unigen.training.config import apply_override, load_config_file, to_json
    cfg = load_config_file(os.path.join(ROOT, "configs", "dit_digits.py"))
    for arg in TINY[:-1]:
        key, _, value = arg[len("--config."):].partition("=")
        apply_override(cfg, key, int(value))
    save_config(str(tmp_path / "w"), to_json(cfg))
    (tmp_path / "w" / "checkpoints").mkdir()
    return tmp_path / "w"


def _md5s(folder):
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


WORKDIR_JSON = dict(DAMAGED_JSON, truncated=(None, "is not valid JSON"), emptied=(b"{}", "is not a unigen training config"))


@pytest.mark.parametrize("how", sorted(WORKDIR_JSON))
def test_damaged_config_json_of_a_work_dir_stops_resume_and_sampling(workdir, monkeypatch, capsys, how):
    from unigen.infer.sample import main as sample_main
    from unigen.training.checkpoint import read_config
    path = workdir / "config.json"
    data, message = WORKDIR_JSON[how]
    path.write_bytes(path.read_bytes()[:200] if data is None else data)
    before = _md5s(workdir)
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(str(workdir))
    rc = _train_main(monkeypatch, "dit_digits.py", workdir)
    _one_error_line(rc, capsys.readouterr().err, str(path), message, "or train in a new --workdir")
    rc = sample_main(["--workdir", str(workdir), "--out", str(workdir.parent / "s.npz")])
    _one_error_line(rc, capsys.readouterr().err, str(path), message)
    assert _md5s(workdir) == before


def test_damaged_work_dir_config_as_subprocesses(workdir):
    """The two commands as a user runs them: one line each, the work dir unchanged."""
    path = workdir / "config.json"
    path.write_bytes(path.read_bytes()[:100])
    before = _md5s(workdir)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for script, args in (("train/train.py", ["--config", os.path.join(ROOT, "configs", "dit_digits.py"), *TINY]),
                         ("infer/sample.py", ["--out", str(workdir.parent / "s.npz")])):
        out = subprocess.run([sys.executable, os.path.join(ROOT, script), "--workdir", str(workdir), *args],
                             capture_output=True, text=True, timeout=300, env=env)
        _one_error_line(out.returncode, out.stderr, str(path), "is not valid JSON")
    assert _md5s(workdir) == before


def test_read_json_optional_and_list_files(tmp_path):
    from unigen.files import read_json
    assert read_json(str(tmp_path / "absent.json"), optional=True) == {}
    with pytest.raises(WeightError, match="no file at"):
        read_json(str(tmp_path / "absent.json"))
    (tmp_path / "modules.json").write_text('[{"type": "x"}]')
    assert read_json(str(tmp_path / "modules.json"), expect=list) == [{"type": "x"}]
    with pytest.raises(ConfigError, match="holds a JSON list, not an object"):
        read_json(str(tmp_path / "modules.json"), error=ConfigError)


# ---- samples and text encoders -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["truncated", "corrupt member", "random"])
def test_damaged_samples_npz_prints_one_error_line(tmp_path, capsys, how):
    from unigen.infer.evaluate import main
    path = tmp_path / "samples.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(path, images=rng.uniform(-1, 1, (20, 8, 8, 1)), labels=np.arange(20) % 10)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "corrupt member":  # the zip directory intact, the deflated images damaged: zlib fails
        data[200:400] = rng.bytes(200)
    else:
        data = rng.bytes(3000)
    path.write_bytes(bytes(data))
    rc = main(["--samples", str(path)])
    _one_error_line(rc, capsys.readouterr().err, str(path), "is not a readable .npz file")


def test_text_encoder_path_holding_another_model_is_refused(dit, tmp_path, monkeypatch, capsys):
    from unigen.text import resolve_text_encoder
    with pytest.raises(WeightError, match="holds a diffusers DiTTransformer2DModel, not a text encoder"):
        resolve_text_encoder(dit)
    (tmp_path / "dinov2").mkdir()
    (tmp_path / "dinov2" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(WeightError, match="model_type 'dinov2', not a text encoder"):
        resolve_text_encoder(str(tmp_path / "dinov2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightError, match="not a text encoder folder"):
        resolve_text_encoder(str(tmp_path / "empty"))
    rc = _train_main(monkeypatch, "mmdit_digits.py", tmp_path / "run", f"--config.text.encoder={dit}", tiny=["--no-progress"])
    _one_error_line(rc, capsys.readouterr().err, dit, "not a text encoder")
    assert not (tmp_path / "run").exists()
