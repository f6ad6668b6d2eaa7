"""Captioned image folders (unigen/data/imagefolder.py): layouts, images, pipeline determinism, errors."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from unigen.data import imagefolder as imf
from unigen.errors import DataError


def _save(path, size=(20, 12), mode="RGB", seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    if mode == "L":
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(path)
    elif mode == "P":
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).quantize(16).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def _metadata(folder, lines):
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def _txt_folder(root, n=6):
    """n images in nested subfolders, each with a caption file; mixed modes and sizes."""
    modes = ["RGB", "L", "RGBA", "P"]
    names = []
    for i in range(n):
        sub = ["", "a", "a/b"][i % 3]
        ext = [".png", ".jpg", ".webp", ".bmp", ".PNG"][i % 5]
        mode = modes[i % 4] if ext in (".png", ".PNG", ".webp") else "RGB"
        p = os.path.join(root, sub, f"img{i}{ext}")
        _save(p, size=(16 + 3 * i, 10 + 2 * i), mode=mode, seed=i)
        with open(os.path.splitext(p)[0] + ".txt", "w") as f:
            f.write(f"  caption {i}\n")
        names.append(p)
    return names


def test_txt_layout_nested_order_and_captions(tmp_path):
    _txt_folder(tmp_path)
    folder = imf.read_captioned_folder(tmp_path)
    rel = [os.path.relpath(p, tmp_path).replace(os.sep, "/") for p in folder.paths]
    assert rel == sorted(rel) and len(rel) == 6
    assert rel[0] == "a/b/img2.webp"
    for p, c in folder.items:
        assert c == f"caption {os.path.basename(p)[3]}"
    assert len(folder.skipped) == 0
    # hidden files / folders are not read
    _save(tmp_path / ".hidden" / "x.png")
    assert imf.read_captioned_folder(tmp_path).items == folder.items


def test_metadata_layout_nested_metadata_and_extra_columns(tmp_path):
    for i in range(3):
        _save(tmp_path / "imgs" / f"{i}.png", seed=i)
    _save(tmp_path / "sub" / "deep" / "z.jpg")
    _metadata(tmp_path, [{"file_name": f"imgs/{i}.png", "text": f"t{i}", "score": i} for i in (2, 0, 1)])
    _metadata(tmp_path / "sub", [{"file_name": "deep/z.jpg", "text": "zed"}])
    # a .txt beside an image is ignored in metadata mode
    (tmp_path / "imgs" / "0.txt").write_text("not this")
    folder = imf.read_captioned_folder(tmp_path)
    assert folder.captions == ("t0", "t1", "t2", "zed")
    assert folder.paths[-1] == os.path.join(str(tmp_path), "sub", "deep", "z.jpg")


def test_load_image_matches_pil_resize_and_crop(tmp_path):
    p = _save(tmp_path / "x.png", size=(40, 24))
    x = imf.load_image(p, 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    ref = np.asarray(Image.open(p).convert("RGB").resize((26, 16), Image.Resampling.BICUBIC))
    ref = ref[:, 5:21].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(x, ref)
    # tall image: crop rows
    q = _save(tmp_path / "t.png", size=(12, 31))
    y = imf.load_image(q, 8)
    ref = np.asarray(Image.open(q).resize((8, 20), Image.Resampling.BICUBIC))[6:14].astype(np.float32)
    np.testing.assert_array_equal(y, ref / 127.5 - 1.0)
    # random crop + flip: one of the admissible windows, reproducible from the rng
    r1 = imf.load_image(p, 16, crop="random", flip=True, rng=np.random.default_rng(3))
    r2 = imf.load_image(p, 16, crop="random", flip=True, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(r1, r2)
    full = np.asarray(Image.open(p).resize((26, 16), Image.Resampling.BICUBIC)).astype(np.float32) / 127.5 - 1
    windows = [full[:, i:i + 16] for i in range(11)]
    assert any(np.array_equal(r1, w) or np.array_equal(r1, w[:, ::-1]) for w in windows)
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_load_image_modes_become_rgb(tmp_path, mode):
    p = _save(tmp_path / "m.png", size=(9, 9), mode=mode)
    x = imf.load_image(p, 9)
    ref = np.asarray(Image.open(p).convert("RGBA" if mode == "P" else mode).convert("RGB"))
    np.testing.assert_array_equal(x, ref.astype(np.float32) / 127.5 - 1.0)


def test_load_image_argument_errors(tmp_path):
    p = _save(tmp_path / "x.png")
    with pytest.raises(DataError, match="rng"):
        imf.load_image(p, 8, crop="random")
    with pytest.raises(DataError, match="crop='middle'"):
        imf.load_image(p, 8, crop="middle")
    with pytest.raises(DataError, match="size=0"):
        imf.load_image(p, 0)


def _batches(ds, k):
    it = iter(ds)
    return [next(it) for _ in range(k)]


def _same(a, b):
    for x, y in zip(a, b):
        assert set(x) == {"image", "caption", "index"}
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["caption"], y["caption"])
        np.testing.assert_array_equal(x["index"], y["index"])


def test_pipeline_deterministic_and_restorable(tmp_path):
    _txt_folder(tmp_path, n=6)
    kw = dict(batch_size=2, image_size=8, seed=5, crop="random", flip=True)
    a = _batches(imf.captioned_dataset(tmp_path, **kw), 7)   # 2+ epochs of 3 batches
    b = _batches(imf.captioned_dataset(str(tmp_path), **kw), 7)
    _same(a, b)
    assert a[0]["image"].shape == (2, 8, 8, 3) and a[0]["caption"].shape == (2,)
    folder = imf.read_captioned_folder(tmp_path)
    # every epoch is a permutation; each view equals the source's view of (seed, epoch, index)
    source = imf.CaptionedImageSource(folder, 8, "random", True, 5)
    for k, batch in enumerate(a[:6]):
        epoch = k // 3
        for img, cap, idx in zip(batch["image"], batch["caption"], batch["index"]):
            np.testing.assert_array_equal(img, source.record(idx, epoch)["image"])
            assert cap == folder.captions[idx]
    assert sorted(np.concatenate([x["index"] for x in a[:3]])) == list(range(6))
    # restore a grain iterator mid-epoch
    ds = imf.captioned_dataset(tmp_path, **kw)
    it = iter(ds)
    next(it), next(it)
    state = it.get_state()
    it2 = iter(imf.captioned_dataset(tmp_path, **kw))
    it2.set_state(state)
    _same([next(it2) for _ in range(5)], a[2:7])
    # another seed: another stream
    c = _batches(imf.captioned_dataset(tmp_path, **{**kw, "seed": 6}), 3)
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_pipeline_shards_and_source(tmp_path):
    _txt_folder(tmp_path, n=6)
    folder = imf.read_captioned_folder(tmp_path)
    seen = []
    for p in range(2):
        ds = imf.captioned_dataset(folder, batch_size=3, image_size=8, seed=0, num_epochs=1,
                                   process_index=p, process_count=2)
        seen.append(sorted(int(i) for b in ds for i in b["index"]))
    assert seen == [[0, 1, 2], [3, 4, 5]]
    src = imf.CaptionedImageSource(folder, 8)
    r = src[4]
    assert r["caption"] == folder.captions[4] and r["index"] == 4 and r["image"].shape == (8, 8, 3)
    with pytest.raises(DataError, match="batch_size <= 3"):
        imf.captioned_dataset(folder, batch_size=4, image_size=8, seed=0, process_count=2)
    with pytest.raises(DataError, match="crop='none'"):
        imf.captioned_dataset(folder, batch_size=1, image_size=8, seed=0, crop="none")


# --- bad inputs -------------------------------------------------------------------------------

def test_no_images_and_not_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images in .*give the folder"):
        imf.read_captioned_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        imf.read_captioned_folder(tmp_path / "nope")


def test_no_captions(tmp_path):
    _save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"no captions in .*metadata\.jsonl.*cat\.txt"):
        imf.read_captioned_folder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,x\n")
    with pytest.raises(DataError, match=r"metadata\.csv found: only metadata\.jsonl is read"):
        imf.read_captioned_folder(tmp_path, missing_caption="empty")


@pytest.mark.parametrize("line,match", [
    ("{not json", "line 2 is not valid JSON"),
    ('["a.png", "x"]', "line 2 is not a JSON object"),
    ('{"text": "x"}', "line 2 has no 'file_name' field"),
    ('{"file_name": "b.png"}', "line 2 has no 'text' field"),
    ('{"file_name": "b.png", "text": 3}', "line 2: 'text' must be a string"),
    ('{"file_name": "gone.png", "text": "x"}', r"line 2 captions 'gone.png', but there is no file at .*gone\.png"),
    ('{"file_name": "a.png", "text": "again"}', r"line 2: 'a.png' is already captioned at .*line 1"),
])
def test_bad_metadata_lines(tmp_path, line, match):
    _save(tmp_path / "a.png")
    _save(tmp_path / "b.png")
    _metadata(tmp_path, [{"file_name": "a.png", "text": "x"}, line])
    with pytest.raises(DataError, match=match) as e:
        imf.read_captioned_folder(tmp_path)
    assert "metadata.jsonl" in str(e.value)


def test_duplicate_across_metadata_files(tmp_path):
    _save(tmp_path / "s" / "a.png")
    _metadata(tmp_path, [{"file_name": "s/a.png", "text": "x"}])
    _metadata(tmp_path / "s", [{"file_name": "./a.png", "text": "y"}])
    with pytest.raises(DataError, match="already captioned"):
        imf.read_captioned_folder(tmp_path)


def test_caption_file_without_image(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "ghost.txt").write_text("y")
    with pytest.raises(DataError, match=r"ghost\.txt have no image beside them"):
        imf.read_captioned_folder(tmp_path)


def test_missing_captions_policies(tmp_path):
    for n in "abcdefgh":
        _save(tmp_path / f"{n}.png")
    (tmp_path / "a.txt").write_text("cap a")
    with pytest.raises(DataError, match=r"7 of 8 images .* have no caption.*and 2 more.*missing_caption='skip'"):
        imf.read_captioned_folder(tmp_path)
    skip = imf.read_captioned_folder(tmp_path, missing_caption="skip")
    assert skip.captions == ("cap a",) and len(skip.skipped.uncaptioned) == 7
    empty = imf.read_captioned_folder(tmp_path, missing_caption="empty")
    assert empty.captions == ("cap a",) + ("",) * 7 and len(empty.skipped) == 0
    with pytest.raises(DataError, match="missing_caption='maybe'"):
        imf.read_captioned_folder(tmp_path, missing_caption="maybe")


def test_unreadable_images_are_skipped_with_a_warning(tmp_path):
    good = _save(tmp_path / "good.png", size=(64, 64))
    with open(good, "rb") as f:
        data = f.read()
    with open(tmp_path / "cut.png", "wb") as f:
        f.write(data[:len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for n in ("good", "cut", "junk"):
        (tmp_path / f"{n}.txt").write_text(n)
    with pytest.warns(UserWarning, match=r"2 unreadable image\(s\) .*cut\.png.*junk\.jpg"):
        folder = imf.read_captioned_folder(tmp_path)
    assert folder.captions == ("good",)
    assert [os.path.basename(p) for p, _ in folder.skipped.unreadable] == ["cut.png", "junk.jpg"]
    # header-only check: the truncated file passes, then fails when loaded, naming it
    with pytest.warns(UserWarning, match=r"1 unreadable"):
        lazy = imf.read_captioned_folder(tmp_path, verify=False)
    assert lazy.captions == ("cut", "good")
    with pytest.raises(DataError, match=r"cut\.png cannot be read.*verify=True"):
        imf.CaptionedImageSource(lazy, 8)[0]
    # nothing readable at all: an error
    os.remove(good)
    os.remove(tmp_path / "good.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the captioned images"):
            imf.read_captioned_folder(tmp_path)


def test_non_utf8_caption_file(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"a\.txt is not UTF-8"):
        imf.read_captioned_folder(tmp_path)
