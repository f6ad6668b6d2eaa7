"""`python -m unigen.eval.train_classifier` writes its weights where it is asked to, by default into
the current folder: the shipped evaluation weights change only when `--out` names them."""

import hashlib
import os

import numpy as np
import pytest

from unigen.eval import train_classifier
from unigen.eval.classifier import WEIGHTS


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_default_out_is_the_current_folder_not_the_shipped_weights(tmp_path, monkeypatch):
    shipped = _digest(WEIGHTS)
    monkeypatch.chdir(tmp_path)
    train_classifier.main(["--epochs", "1"])
    assert _digest(WEIGHTS) == shipped
    arrays = np.load(tmp_path / "digits_classifier.npz")
    assert "conv1/kernel" in arrays.files
    train_classifier.main(["--epochs", "1", "--out", str(tmp_path / "sub" / "w.npz")])
    assert (tmp_path / "sub" / "w.npz").exists() and _digest(WEIGHTS) == shipped


def test_bad_out_and_default_inside_the_package_are_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        train_classifier.main(["--epochs", "1", "--out", str(tmp_path / "w.pt")])
    assert "must end with .npz" in capsys.readouterr().err
    monkeypatch.chdir(os.path.dirname(WEIGHTS))  # the default would land on the shipped file
    with pytest.raises(SystemExit):
        train_classifier.main(["--epochs", "1"])
    assert "replace the shipped weights" in capsys.readouterr().err
