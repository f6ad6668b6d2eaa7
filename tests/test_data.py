"""Digits TFDS builder (array_record, no TensorFlow) and the grain pipeline."""

import json
import os
import shutil
import socket

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from unigen.data import (digits_arrays, load_builder, make_dataset, prepare_digits,
                         resolve_data_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    prepare_digits(d)
    return str(d)


def _expected_split():
    """The split rule written independently: count images per class while walking the set."""
    target = load_digits().target
    seen = {c: 0 for c in range(10)}
    test, train = [], []
    for i, c in enumerate(target):
        (test if seen[int(c)] % 5 == 0 else train).append(i)
        seen[int(c)] += 1
    return np.array(train), np.array(test)


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_split_rule_and_counts():
    train_idx, test_idx = _expected_split()
    tr, te = digits_arrays("train"), digits_arrays("test")
    np.testing.assert_array_equal(tr["index"], train_idx)
    np.testing.assert_array_equal(te["index"], test_idx)
    assert len(tr["label"]) == 1433 and len(te["label"]) == 364
    class_counts = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_array_equal(np.bincount(te["label"], minlength=10),
                                  -(-class_counts // 5))  # ceil(count / 5) per class
    assert set(train_idx) | set(test_idx) == set(range(1797))


def test_builder_round_trip_matches_sklearn(data_dir):
    builder = load_builder("digits", data_dir)
    assert builder.info.file_format.value == "array_record"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == \
        {"train": 1433, "test": 364}
    sk = load_digits()
    expected = np.floor(sk.images * 255 / 16 + 0.5).astype(np.uint8)  # round half up
    for split, idx in zip(("train", "test"), _expected_split()):
        src = builder.as_data_source(split=split)
        recs = [src[i] for i in range(len(src))]
        np.testing.assert_array_equal([r["index"] for r in recs], idx)
        np.testing.assert_array_equal([r["label"] for r in recs], sk.target[idx])
        images = np.stack([r["image"] for r in recs])
        assert images.shape == (len(idx), 8, 8, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0], expected[idx])
    assert expected.min() == 0 and expected.max() == 255


def test_prepare_is_idempotent(data_dir):
    files = sorted(os.listdir(os.path.join(data_dir, "digits", "1.0.0")))
    mtimes = [os.path.getmtime(os.path.join(data_dir, "digits", "1.0.0", f)) for f in files]
    prepare_digits(data_dir)
    assert mtimes == [os.path.getmtime(os.path.join(data_dir, "digits", "1.0.0", f))
                      for f in files]


def test_concurrent_prepare_from_several_processes(tmp_path):
    # A multi-process run on one machine with an empty data dir: every process prepares
    # digits at once. Without the lock all but one died renaming onto the finished folder.
    import subprocess
    import sys
    code = ("import sys; from unigen.data import prepare_digits; "
            "print(prepare_digits(sys.argv[1]).info.splits['train'].num_examples)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert out.split()[-1] == str(len(_expected_split()[0]))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_batch_shapes_range_and_resize(data_dir, size):
    ds = make_dataset("digits", "test", batch_size=16, image_size=size, seed=0,
                      shuffle=False, data_dir=data_dir)
    b = _take(ds, 1)[0]
    assert b["image"].shape == (16, size, size, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (16,) and b["label"].dtype == np.int32
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    raw = digits_arrays("test")["image"][:16].astype(np.float32)
    # Independent resize: jax's antialiased linear resize equals PIL's bilinear.
    ref = np.asarray(jax.image.resize(raw, (16, size, size, 1), "linear", antialias=True))
    np.testing.assert_allclose(b["image"], np.clip(ref / 127.5 - 1, -1, 1), atol=1e-5)
    if size == 8:  # native size: exact, and the full range is used
        assert b["image"].min() == -1.0 and b["image"].max() == 1.0


def test_seeded_shuffle_is_deterministic(data_dir):
    kw = dict(batch_size=32, image_size=8, data_dir=data_dir, extra_keys=("index",))
    a = _take(make_dataset("digits", "train", seed=3, **kw), 3)
    b = _take(make_dataset("digits", "train", seed=3, **kw), 3)
    c = _take(make_dataset("digits", "train", seed=4, **kw), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["index"], c[0]["index"])
    plain = _take(make_dataset("digits", "train", seed=3, shuffle=False, **kw), 1)[0]
    np.testing.assert_array_equal(plain["index"], digits_arrays("train")["index"][:32])


def test_epochs_cover_split_and_reshuffle(data_dir):
    ds = make_dataset("digits", "test", batch_size=4, image_size=8, seed=0, num_epochs=2,
                      data_dir=data_dir, extra_keys=("index",))
    idx = np.concatenate([b["index"] for b in ds])
    assert len(idx) == 364 * 2
    first, second = idx[:364], idx[364:]
    assert sorted(first) == sorted(second) == sorted(digits_arrays("test")["index"])
    assert not np.array_equal(first, second)  # each epoch is shuffled differently


def test_iterator_state_checkpoint(data_dir):
    # batch 100 of 364 test images: 3 batches per epoch, so this crosses epoch boundaries.
    ds = make_dataset("digits", "test", batch_size=100, image_size=16, seed=7,
                      data_dir=data_dir)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive a checkpoint file
    want = [next(it) for _ in range(4)]
    fresh = iter(make_dataset("digits", "test", batch_size=100, image_size=16, seed=7,
                              data_dir=data_dir))
    fresh.set_state(state)
    for w in want:
        g = next(fresh)
        np.testing.assert_array_equal(g["image"], w["image"])
        np.testing.assert_array_equal(g["label"], w["label"])


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_disjoint_and_covering(data_dir, count):
    shards = []
    for p in range(count):
        ds = make_dataset("digits", "train", batch_size=1, image_size=8, seed=0,
                          num_epochs=1, process_index=p, process_count=count,
                          data_dir=data_dir, extra_keys=("index",))
        shards.append([int(b["index"][0]) for b in ds])
    per = 1433 // count
    assert all(len(s) == per for s in shards)  # equal sizes: no process waits on another
    union = set().union(*map(set, shards))
    assert len(union) == per * count  # disjoint
    assert union == set(digits_arrays("train")["index"][:per * count].tolist())


def test_unprepared_dataset_error_without_network(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(FileNotFoundError) as e:
        make_dataset("mnist", "train", batch_size=8, image_size=28, seed=0,
                     data_dir=str(tmp_path))
    msg = str(e.value)
    assert f"tfds build mnist --data_dir={tmp_path} --file_format=array_record" in msg
    assert "download_and_prepare" in msg


def test_generic_loader_reads_prepared_folder_and_checks_format(data_dir, tmp_path):
    # A user-prepared set is read from its files only (here: a copy under another name).
    shutil.copytree(os.path.join(data_dir, "digits"), tmp_path / "mydigits")
    b = _take(make_dataset("mydigits", "test", batch_size=8, image_size=32, seed=0,
                           shuffle=False, data_dir=str(tmp_path)), 1)[0]
    assert b["image"].shape == (8, 32, 32, 1)
    np.testing.assert_array_equal(b["label"], digits_arrays("test")["label"][:8])
    info = tmp_path / "mydigits" / "1.0.0" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"
    info.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="--out_file_format=array_record"):
        load_builder("mydigits", str(tmp_path))


def test_data_dir_resolution_and_bad_arguments(data_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    assert resolve_data_dir() == data_dir and resolve_data_dir("/x") == "/x"
    ok = dict(batch_size=8, image_size=8, seed=0, data_dir=data_dir)
    for bad, field in [(dict(batch_size=0), "batch_size"), (dict(batch_size=2000), "batch_size"),
                       (dict(process_index=2, process_count=2), "process_index"),
                       (dict(image_size=-1), "image_size"), (dict(crop="random"), "crop")]:
        with pytest.raises(ValueError, match=field):
            make_dataset("digits", "train", **{**ok, **bad})
    with pytest.raises(ValueError, match="split"):
        make_dataset("digits", "validation", **ok)
