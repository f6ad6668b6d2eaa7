"""Image grids as PNG files: samples are looked at, not just counted."""

from __future__ import annotations

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float NHWC -> uint8 NHWC."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, rows: int, *, pad: int = 1, upscale: int = 1, fill: int = 255) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 image,
    filled row by row (so `rows` classes x `N/rows` samples gives one row per class)."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
        h, w = h * upscale, w * upscale
    cols = -(-n // rows)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i]
    return grid


def save_grid(path: str, images: np.ndarray, rows: int, *, upscale: int | None = None,
              labels=None) -> np.ndarray:
    """Write the grid as a PNG; returns it ((H, W, C) uint8). `labels` (one per row: a class id,
    a prompt) are written at the left of their rows, so a grid says what each row was asked for."""
    from PIL import Image

    h = images.shape[1]
    upscale = upscale or max(1, 48 // h)  # tiny digits are unreadable at 8 px
    # Nearest upscaling keeps the pixels sharp; a mid-grey gap of a sixth of a cell keeps the
    # cells apart (1-px white lines between dark 8x8 digits read as streaks at normal size).
    pad = max(2, h * upscale // 6)
    grid = make_grid(images, rows, upscale=upscale, pad=pad, fill=128)
    if labels is not None:
        grid = _label_rows(grid, [str(label) for label in labels], rows, cell=h * upscale, pad=pad)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    Image.fromarray(grid[..., 0] if mode == "L" else grid[..., :3], mode=mode).save(path)
    return grid


MAX_LABEL_CHARS = 40  # a long prompt is cut (with "...") so the image stays mostly samples


def _label_rows(grid: np.ndarray, labels: list[str], rows: int, *, cell: int, pad: int) -> np.ndarray:
    """`grid` with a column at its left holding each row's label, vertically centred on the row,
    in white on the grid's grey."""
    from PIL import Image, ImageDraw, ImageFont

    if len(labels) != rows:
        raise ValueError(f"save_grid: {len(labels)} labels for {rows} rows (give one label per row)")
    labels = [t if len(t) <= MAX_LABEL_CHARS else t[:MAX_LABEL_CHARS - 3] + "..." for t in labels]
    font = ImageFont.load_default(size=max(10, min(20, cell // 3)))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = max(int(np.ceil(measure.textlength(t, font=font))) for t in labels) + 2 * pad
    canvas = Image.new("L", (width, grid.shape[0]), 128)
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        centre = pad + r * (cell + pad) + cell / 2
        draw.text((width - pad, centre), text, fill=255, font=font, anchor="rm")  # right-aligned, by the row
    column = np.asarray(canvas)[..., None].repeat(grid.shape[-1], axis=-1)
    if grid.shape[-1] == 4:  # RGBA: the label column is opaque
        column[..., 3] = 255
    return np.concatenate([column, grid], axis=1)
