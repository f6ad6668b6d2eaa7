"""Two augmented views per image for contrastive representation learning on small grey digits.

    aug = DigitAugment()                          # the defaults; DigitAugment.identity(): off
    view = aug(image, np.random.default_rng(0))   # (H,W,C) float32 in [-1,1] -> same shape
    ds = add_two_views(ds, aug, seed=seed, process_index=p)   # ds: a grain MapDataset after
    # repeat() and Preprocess; records gain "view_a", "view_b" next to "image" and "label".

What one view is (applied in this order, each an exact no-op at its identity value):

1. Affine warp about the image centre ((H-1)/2, (W-1)/2 in pixel-centre coordinates):
   rotation uniform in +-`rotation_deg` (10), isotropic scale uniform in
   [`scale_min`, `scale_max`] (0.9..1.1), shear uniform in +-`shear_deg` (5, x += tan(phi)*y).
   Output pixel p samples the input at A^-1 (p - c) + c with bilinear interpolation; whatever
   falls outside the frame is `background` (-1, i.e. no ink in the [-1, 1] space of `Preprocess`).
2. Integer shift by (dy, dx), each uniform in {-`max_shift`..`max_shift`} (1): pixels move
   exactly, no interpolation; the uncovered border is `background`.
3. Ink gain: x' = bg + g (x - bg), g uniform in [1 - `intensity`, 1 + `intensity`] (0.1),
   clipped to [-1, 1]. The background stays exactly `background`; only stroke darkness changes.

Why these ranges: a digit here is 8x8 pixels whose strokes are 1-2 pixels wide, and the digits
are size-normalised so that rows 0 and 7 carry ink in every image. Rotating by 10 degrees moves
a frame corner (radius ~5 px) by ~0.9 px, +-10 % scale moves the frame edge by <= 0.35 px and a
5 degree shear by <= 0.3 px: each warp stays at or under one pixel, the size of the shift. Much
more (the reference's crops, 30 degree rotations, 0.5x scales) moves strokes by several pixels
on an 8-pixel canvas, i.e. destroys or relabels the digit (a rotated 6 is a 9). A 1 px shift is
already 12.5 % of the frame and always pushes a row of ink out; use larger `max_shift` only for
upsampled images (`image_size=16` -> `max_shift=2` is the same +-1 original pixel): all sizes
here are in pixels of the image the transform sees, i.e. after `Preprocess` resizing.

What it stands in for: Latent Zoning Networks' contrastive case study
(microsoft/latent-zoning-networks, configs/lzn1/case_study_2.py -> lzn/data/imagenet_aug.py) uses
the SimCLR recipe on 224 px ImageNet: RandomResizedCrop(224) (area 0.08..1, aspect 3/4..4/3),
RandomHorizontalFlip, ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.8, RandomGrayscale(p=0.2),
GaussianBlur(kernel 23, sigma 0.1..2, always applied), then x*2-1; `DoubleImageNet` loads the
same index twice to get two independent views. Here: the crop's geometric variety -> the small
warp + shift; colour jitter (one grey channel: no hue, saturation or grey-scaling) -> the ink
gain, the brightness part of the jitter on a black background; horizontal flip -> dropped
(digits are not mirror-symmetric: a flip is not label-preserving); blur -> dropped (bilinear
resampling already low-passes, and a sigma of ~1 px erases 1-px strokes on 8x8).

Determinism: the reference draws from torch's global RNG in each loader worker, so views are
not reproducible after a resume. Here a view is a pure function of (image, rng), and
`TwoViews` is a grain random-map callable: `grain.MapDataset.random_map(TwoViews(...), seed=s)`
hands it, for the element at dataset index i, numpy Generator(Philox(key from s)) with its
counter reset to [0, 0, 0, i] (grain 0.2.18 `RngPool`). Placed after (above) repeat(), i is
the global index epoch * len + position, so every epoch gets fresh views. Placed before it,
this still holds with grain's default repeat(reseed_each_epoch=True), which passes the global
index down to its parents (as it does for shuffle); with reseed_each_epoch=False they see
i mod len and every epoch replays the same views. The iterator state stays just a position:
get_state/set_state reproduce the views exactly, and worker processes (index-based reads) do
not change them. (`IterDataset.random_map` also works, but keys the RNG on a per-iterator
element counter kept in the iterator state.)
Process shards each index their own stream from 0, so `add_two_views` mixes the process index
into the seed; otherwise process p and q would draw identical warp parameters at each position.

Centre of mass: while all ink stays in the frame, a shift moves the ink centre of mass by
exactly (dy, dx) and the small warp, which sits about the centre where the ink mass is, adds
little. On real 8x8 digits a 1 px shift always pushes a row (rows 0 and 7 carry ink) and
sometimes a column out, and the lost ink also moves the centre of mass along the other axis:
over all 1433 train digits and all 9 shifts the largest per-axis move is 1.47 px (24 % of the
pairs exceed 1 px); with the defaults, 1.43 px over 5 draws per digit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from unigen.errors import DataError

__all__ = ["DigitAugment", "TwoViews", "add_two_views", "view_seed", "warp_matrix",
           "affine_warp", "shift_image", "ink_gain"]


def _number(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _check(name, value, ok, fix):
    if not ok:
        raise DataError(f"DigitAugment.{name}={value!r} is invalid; {fix}")


def _as_hwc(image) -> np.ndarray:
    x = np.asarray(image, np.float32)
    if x.ndim != 3:
        raise DataError(f"augment: image must be HWC (H, W, C), got shape {x.shape}; "
                        f"apply it after Preprocess, which adds the channel axis")
    return x


def warp_matrix(rotation_deg: float = 0.0, scale: float = 1.0, shear_deg: float = 0.0):
    """2x2 forward map on (x, y) offsets from the centre: rotation @ shear @ scale.

    Exactly the identity for (0, 1, 0).
    """
    t, p = math.radians(rotation_deg), math.radians(shear_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    shear = np.array([[1.0, math.tan(p)], [0.0, 1.0]])
    return rot @ shear @ (float(scale) * np.eye(2))


def affine_warp(image, matrix, fill: float = -1.0) -> np.ndarray:
    """Warp (H,W,C) by `matrix` (forward, about the centre) with bilinear sampling; out = fill.

    Output pixel (y, x) reads the input at A^-1 ((x, y) - c) + c; the frame is surrounded by
    one pixel of `fill`, so strokes fade into the background at the border rather than stop.
    """
    x = _as_hwc(image)
    a = np.asarray(matrix, np.float64)
    if a.shape != (2, 2):
        raise DataError(f"affine_warp: matrix must be 2x2, got shape {a.shape}")
    if np.array_equal(a, np.eye(2)):
        return x.copy()
    h, w = x.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    inv = np.linalg.inv(a)
    ox, oy = xs - cx, ys - cy
    sx = inv[0, 0] * ox + inv[0, 1] * oy + cx + 1.0  # +1: coordinates in the padded frame
    sy = inv[1, 0] * ox + inv[1, 1] * oy + cy + 1.0
    padded = np.pad(x.astype(np.float64), ((1, 1), (1, 1), (0, 0)), constant_values=fill)
    # Anything beyond the padding clamps onto it, and the padding is all `fill`.
    sx = np.clip(sx, 0.0, w + 1.0)
    sy = np.clip(sy, 0.0, h + 1.0)
    x0 = np.minimum(np.floor(sx).astype(np.int64), w)
    y0 = np.minimum(np.floor(sy).astype(np.int64), h)
    fx = (sx - x0)[..., None]
    fy = (sy - y0)[..., None]
    top = padded[y0, x0] * (1.0 - fx) + padded[y0, x0 + 1] * fx
    bottom = padded[y0 + 1, x0] * (1.0 - fx) + padded[y0 + 1, x0 + 1] * fx
    out = top * (1.0 - fy) + bottom * fy
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def shift_image(image, dy: int, dx: int, fill: float = -1.0) -> np.ndarray:
    """out[y, x] = image[y - dy, x - dx] (dy > 0 moves down, dx > 0 right); uncovered = fill."""
    x = _as_hwc(image)
    h, w = x.shape[:2]
    dy, dx = int(dy), int(dx)
    out = np.full_like(x, fill)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def ink_gain(image, gain: float, fill: float = -1.0) -> np.ndarray:
    """fill + gain * (image - fill), clipped to [-1, 1]: scales the ink, keeps the background."""
    x = _as_hwc(image)
    if gain == 1.0:
        return x.copy()
    return np.clip(fill + float(gain) * (x - fill), -1.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DigitAugment:
    """Random warp + integer shift + ink gain for small grey images in [-1, 1] (see module doc).

    Call as aug(image, rng) with a numpy Generator. Every call draws the same six numbers in
    the same order (rotation, scale, shear, dy, dx, gain) whatever the settings, so one seed's
    stream does not shift when a range is switched off.
    """

    max_shift: int = 1             # pixels, each axis, integer
    rotation_deg: float = 10.0     # uniform in [-r, r]
    scale_min: float = 0.9         # isotropic scale uniform in [scale_min, scale_max]
    scale_max: float = 1.1
    shear_deg: float = 5.0         # uniform in [-s, s]
    intensity: float = 0.1         # ink gain uniform in [1 - i, 1 + i]; 0 = off
    background: float = -1.0       # fill value: no ink in Preprocess's [-1, 1] space

    def __post_init__(self):
        self.validate()

    @classmethod
    def identity(cls) -> "DigitAugment":
        """Every range off: aug(image, rng) returns an exact copy of the image."""
        return cls(max_shift=0, rotation_deg=0.0, scale_min=1.0, scale_max=1.0,
                   shear_deg=0.0, intensity=0.0)

    def validate(self) -> "DigitAugment":
        """Raise DataError naming the field and the fix; return self."""
        _check("max_shift", self.max_shift, isinstance(self.max_shift, (int, np.integer))
               and not isinstance(self.max_shift, bool) and self.max_shift >= 0,
               "pass an int >= 0 (pixels; 1 for 8x8 digits)")
        _check("rotation_deg", self.rotation_deg, _number(self.rotation_deg)
               and 0 <= self.rotation_deg <= 45,
               "pass degrees in [0, 45] (10 for 8x8 digits; more relabels them, 6 -> 9)")
        for name in ("scale_min", "scale_max"):
            v = getattr(self, name)
            _check(name, v, _number(v) and 0.5 <= v <= 2.0, "pass a scale in [0.5, 2]")
        _check("scale_max", self.scale_max, self.scale_max >= self.scale_min,
               f"pass scale_max >= scale_min={self.scale_min!r}")
        _check("shear_deg", self.shear_deg, _number(self.shear_deg)
               and 0 <= self.shear_deg <= 30, "pass degrees in [0, 30] (5 for 8x8 digits)")
        _check("intensity", self.intensity, _number(self.intensity)
               and 0 <= self.intensity < 1, "pass a gain spread in [0, 1) (0 = off)")
        _check("background", self.background, _number(self.background)
               and -1 <= self.background <= 1,
               "pass the no-ink value in [-1, 1] (-1 after Preprocess)")
        return self

    @property
    def is_identity(self) -> bool:
        return (self.max_shift == 0 and self.rotation_deg == 0 and self.scale_min == 1
                and self.scale_max == 1 and self.shear_deg == 0 and self.intensity == 0)

    def sample(self, rng: np.random.Generator) -> dict:
        """Draw one view's parameters: rotation_deg, scale, shear_deg, dy, dx, gain."""
        rot = float(rng.uniform(-self.rotation_deg, self.rotation_deg))
        scale = float(rng.uniform(self.scale_min, self.scale_max))
        shear = float(rng.uniform(-self.shear_deg, self.shear_deg))
        dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        gain = float(rng.uniform(1.0 - self.intensity, 1.0 + self.intensity))
        if self.rotation_deg == 0:  # uniform(-0., 0.) may give -0.0; keep identity exact
            rot = 0.0
        if self.shear_deg == 0:
            shear = 0.0
        if self.intensity == 0:
            gain = 1.0
        return dict(rotation_deg=rot, scale=scale, shear_deg=shear, dy=dy, dx=dx, gain=gain)

    def apply(self, image, params: dict) -> np.ndarray:
        """One view with explicit parameters (as returned by `sample`)."""
        x = _as_hwc(image)
        h, w = x.shape[:2]
        if self.max_shift >= min(h, w):
            raise DataError(f"DigitAugment.max_shift={self.max_shift} is invalid for "
                            f"{h}x{w} images; pass max_shift < {min(h, w)}")
        bg = float(self.background)
        x = affine_warp(x, warp_matrix(params["rotation_deg"], params["scale"],
                                       params["shear_deg"]), bg)
        if params["dy"] or params["dx"]:
            x = shift_image(x, params["dy"], params["dx"], bg)
        return ink_gain(x, params["gain"], bg)

    def __call__(self, image, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.sample(rng))


def _default_augment() -> DigitAugment:
    return DigitAugment()


@dataclasses.dataclass(frozen=True)
class TwoViews:
    """grain random map: {"image", "label", ...} -> the same plus "view_a", "view_b".

    view_a and view_b are two independent draws of `augment` on `record[image_key]` (float32,
    same shape); "image" and every other key pass through untouched. Use with
    `MapDataset.random_map(TwoViews(...), seed=...)` (or `add_two_views`): grain passes the
    per-index Generator as the second argument. A plain picklable callable (grain's
    random_map accepts `Callable[[T, Generator], S]` as well as `grain.transforms.RandomMap`),
    so importing this module does not import grain.
    """

    augment: DigitAugment = dataclasses.field(default_factory=_default_augment)
    image_key: str = "image"

    def __post_init__(self):
        if not isinstance(self.augment, DigitAugment):
            raise DataError(f"TwoViews.augment must be a DigitAugment, got "
                            f"{type(self.augment).__name__}")
        self.augment.validate()

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if self.image_key not in element:
            raise DataError(f"TwoViews: record has no {self.image_key!r} "
                            f"(keys: {sorted(element)}); pass image_key=")
        image = element[self.image_key]
        out = dict(element)
        out["view_a"] = self.augment(image, rng)
        out["view_b"] = self.augment(image, rng)
        return out

    def __call__(self, element: dict, rng: np.random.Generator) -> dict:
        return self.random_map(element, rng)


def view_seed(seed: int, process_index: int = 0) -> int:
    """The random_map seed for process `process_index`: a uint32 hash of (seed, index, tag)."""
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
            and 0 <= seed < 2**32):
        raise DataError(f"view_seed: seed={seed!r} is invalid; pass an int in [0, 2**32)")
    if not (isinstance(process_index, (int, np.integer)) and process_index >= 0):
        raise DataError(f"view_seed: process_index={process_index!r} is invalid; "
                        f"pass jax.process_index()")
    ss = np.random.SeedSequence([int(seed), int(process_index), 0x2F1E75])
    return int(ss.generate_state(1, np.uint32)[0])


def add_two_views(ds, augment: DigitAugment | None = None, *, seed: int,
                  process_index: int = 0, image_key: str = "image"):
    """ds.random_map(TwoViews(augment), seed=view_seed(seed, process_index)).

    `ds` is a grain MapDataset whose records already went through Preprocess: put this after
    repeat() (fresh views every epoch whatever repeat's reseed_each_epoch) and before batch().
    """
    aug = DigitAugment() if augment is None else augment
    return ds.random_map(TwoViews(aug, image_key), seed=view_seed(seed, process_index))
