"""Sample grids (unigen/images.py): cells apart on a grey gap, and each row labelled with what it
was asked for when labels are given."""

import numpy as np
import pytest
from PIL import Image

from unigen.images import make_grid, save_grid


def test_grid_without_labels_is_the_plain_grid(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (20, 8, 8, 1)).astype(np.float32)
    grid = save_grid(str(tmp_path / "g.png"), x, rows=2)
    np.testing.assert_array_equal(grid, make_grid(x, 2, upscale=6, pad=8, fill=128))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid[..., 0])


@pytest.mark.parametrize("channels", [1, 3])
def test_labels_are_drawn_left_of_their_rows(tmp_path, channels):
    x = np.full((6, 8, 8, channels), -1.0, np.float32)  # black cells
    plain = save_grid(str(tmp_path / "plain.png"), x, rows=3)
    grid = save_grid(str(tmp_path / "g.png"), x, rows=3, labels=[0, "a handwritten 7", 9])
    width = grid.shape[1] - plain.shape[1]
    assert width > 0 and grid.shape[0] == plain.shape[0]
    np.testing.assert_array_equal(grid[:, width:], plain)  # the samples are untouched
    column = grid[:, :width, 0]
    cell, pad = 48, 8
    for r in range(3):  # white text in every row's band, nothing in the gaps between rows
        band = column[pad + r * (cell + pad): pad + r * (cell + pad) + cell]
        assert (band > 200).sum() > 10
    assert (column[:pad] == 128).all() and (column[pad + cell: 2 * pad + cell] == 128).all()
    saved = np.asarray(Image.open(tmp_path / "g.png"))
    assert saved.shape[:2] == grid.shape[:2]
    with pytest.raises(ValueError, match="one label per row"):
        save_grid(str(tmp_path / "bad.png"), x, rows=3, labels=["0", "1"])
