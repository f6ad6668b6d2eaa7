"""Digits evaluation: classifier, Fréchet distance, memorisation, yardsticks, CLI."""

import json
import os

import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from unigen.data import digits_arrays
from unigen.eval import (classify, eval_labels, evaluate_samples, format_report,
                         frechet_distance, frechet_distance_features, gmm_samples,
                         memoriser_samples, reference, to_eval_space)
from unigen.eval.classifier import WEIGHTS, DigitsClassifier, flat_params, load_params
from unigen.infer.evaluate import load_samples, main


def _test_images():
    t = digits_arrays("test")
    return t["image"].astype(np.float32) / 127.5 - 1, t["label"]


def test_shipped_classifier_reaches_99_percent():
    assert os.path.getsize(WEIGHTS) < 1_000_000
    x, y = _test_images()
    logits, feats = classify(x)
    assert (logits.argmax(-1) == y).mean() >= 0.99
    assert feats.shape == (len(y), 64)


def test_classifier_training_runs_and_weights_round_trip(tmp_path):
    from unigen.eval.train_classifier import train

    model = train(epochs=2, seed=1)
    np.savez(tmp_path / "w.npz", **flat_params(model))
    arrays = dict(np.load(tmp_path / "w.npz"))
    fresh = load_params(nnx.eval_shape(lambda: DigitsClassifier(rngs=nnx.Rngs(5))), arrays)
    x, _ = _test_images()
    np.testing.assert_allclose(np.asarray(fresh(x[:8])), np.asarray(model(x[:8])), atol=1e-6)
    with pytest.raises(ValueError, match="expected keys"):
        load_params(DigitsClassifier(rngs=nnx.Rngs(0)), {"conv1/kernel": arrays["conv1/kernel"]})


def test_frechet_closed_form_commuting_gaussians():
    # Same eigenbasis Q: FD = |dmu|^2 + sum (sqrt(l1) - sqrt(l2))^2.
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    l1, l2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_matches_scipy_sqrtm_general_and_rank_deficient():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((10, 10)), rng.standard_normal((10, 10))
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-7)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    low = rng.standard_normal((5, 10))  # rank 5 in 10 dims: must stay finite and >= 0
    fd = frechet_distance(mu1, low.T @ low, mu2, s2)
    assert np.isfinite(fd) and fd > 0
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, s1, mu2[:3], s2)


def test_fd_of_test_features_zero_and_noise_large():
    x, _ = _test_images()
    _, f = classify(x)
    assert frechet_distance_features(f, f) < 1e-6
    noise = np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)
    memo = evaluate_samples(*memoriser_samples(364, 0))["fd"]["mean"]
    noisy = evaluate_samples(noise, np.zeros(len(noise), np.int32))["fd"]["mean"]
    assert noisy > 20 * memo


def test_memorisation_metric_separates_copies_from_fresh_digits():
    x, y = _test_images()
    real = evaluate_samples(x, y)
    assert real["copy_share"]["mean"] == pytest.approx(0.05, abs=0.01)
    assert real["nn_dist"]["mean"] == pytest.approx(reference().test_nn_mean)
    assert real["accuracy"]["mean"] >= 0.99
    copies = [memoriser_samples(400, s) for s in (0, 1)]
    memo = evaluate_samples(np.concatenate([c[0] for c in copies]),
                            np.concatenate([c[1] for c in copies]), seeds=np.repeat([0, 1], 400))
    assert memo["copy_share"]["mean"] == 1.0 and memo["nn_dist"]["mean"] < 1e-6
    assert memo["num_seeds"] == 2 and memo["accuracy"]["mean"] == 1.0
    per = [r["fd"] for r in memo["per_seed"]]
    assert memo["fd"]["mean"] == pytest.approx(np.mean(per))
    assert memo["fd"]["std"] == pytest.approx(np.std(per, ddof=1))


def test_eval_labels_follow_test_mix():
    shares = np.bincount(digits_arrays("test")["label"], minlength=10) / 364
    labels = eval_labels(5000, 0)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 5000 and np.all(np.abs(counts - 5000 * shares) < 1)
    np.testing.assert_array_equal(labels, eval_labels(5000, 0))
    assert not np.array_equal(labels, eval_labels(5000, 1))
    np.testing.assert_array_equal(np.sort(labels), np.sort(eval_labels(5000, 1)))
    with pytest.raises(ValueError, match="n must be"):
        eval_labels(0)


def test_to_eval_space_area_resize():
    x, _ = _test_images()
    up = np.repeat(np.repeat(x[:5], 4, axis=1), 4, axis=2)  # 32x32 nearest upsample
    np.testing.assert_allclose(to_eval_space(up), x[:5], atol=1e-6)
    assert to_eval_space(np.zeros((3, 12, 12, 1))).shape == (3, 8, 8, 1)


def test_gmm_baseline_samples():
    imgs, labels = gmm_samples(300, 0)
    assert imgs.shape == (300, 8, 8, 1) and imgs.min() >= -1 and imgs.max() <= 1
    np.testing.assert_array_equal(labels, eval_labels(300, 0))
    r = evaluate_samples(imgs, labels)
    assert r["accuracy"]["mean"] > 0.9 and r["copy_share"]["mean"] < 0.5
    np.testing.assert_array_equal(gmm_samples(300, 0)[0], imgs)  # seeded


def test_cli_prints_table_and_json(tmp_path, capsys):
    parts = [memoriser_samples(60, s) for s in (0, 1, 2)]
    images = np.concatenate([np.repeat(np.repeat(p[0], 2, 1), 2, 2) for p in parts])  # 16x16
    np.savez(tmp_path / "s.npz", images=images, labels=np.concatenate([p[1] for p in parts]),
             seed=np.repeat([0, 1, 2], 60))
    assert main(["--samples", str(tmp_path / "s.npz"), "--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    for row in ("samples", "GMM (10/class)", "memoriser (train copies)", "FD (test)"):
        assert row in out
    rows = json.loads((tmp_path / "o.json").read_text())
    assert rows["samples"]["num_seeds"] == 3 and rows["samples"]["n_per_seed"] == [60] * 3
    assert rows["GMM (10/class)"]["n_per_seed"] == [60] * 3
    assert format_report(rows).count("\n") >= 5


def test_unlabelled_samples_get_fd_and_memorisation_without_accuracy(tmp_path, capsys):
    imgs, labels = gmm_samples(200, 0)
    r = evaluate_samples(imgs, None)
    assert "accuracy" not in r and r["fd"]["mean"] == evaluate_samples(imgs, labels)["fd"]["mean"]
    np.savez(tmp_path / "u.npz", images=imgs)
    assert main(["--samples", str(tmp_path / "u.npz"), "--no-baselines"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("samples")][0]
    assert "—" in line  # the accuracy cell


@pytest.mark.parametrize("arrays, message", [
    (dict(labels=np.zeros(4, int)), "no `images` array"),
    (dict(images=np.zeros((4, 8, 8)), labels=np.zeros(4, int)), r"\(N, H, W, 1\)"),
    (dict(images=np.zeros((4, 8, 8, 1)), labels=np.zeros(3, int)), "labels must have shape"),
    (dict(images=np.full((4, 8, 8, 1), 1.5), labels=np.zeros(4, int)), r"\[-1, 1\]"),
    (dict(images=np.zeros((4, 8, 8, 1)), labels=np.full(4, 10)), "0..9"),
    (dict(images=np.zeros((4, 8, 8, 1)), labels=np.zeros(4, int), seed=np.zeros(2, int)),
     "seed must be"),
])
def test_bad_npz_errors(tmp_path, capsys, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_samples(str(path))
    assert main(["--samples", str(path)]) == 2
    assert "error:" in capsys.readouterr().err
