"""Image transforms: keyed random resized crop + flip, val resize + center crop.

Semantics follow torchvision's RandomResizedCrop (10 attempts, then a
ratio-clamped central crop) and open_clip's bicubic resampling, implemented
with PIL because torchvision is not a dependency. The geometry is drawn once
per sample from (seed, epoch, key, "augment") and applied to the image and,
for dense tasks, to its seg/depth maps with nearest resampling, so labels stay
aligned with pixels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .keyed import keyed_rng

# OpenAI CLIP's normalisation, used by open_clip and the VeCLIP processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# to_normalized_tensor reads PIL's bytes through a read-only numpy view (no copy); torch warns
# about non-writable arrays once per process, which says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32) * 255.0
_INV_STD = 1.0 / (np.asarray(CLIP_STD, dtype=np.float32) * 255.0)
_MEAN_T = torch.from_numpy(_MEAN).view(3, 1, 1)
_INV_STD_T = torch.from_numpy(_INV_STD).view(3, 1, 1)


@dataclass(frozen=True)
class AugmentParams:
    """DataSpec.augment: crop_scale None disables the random crop (resize + center crop)."""

    crop_scale: tuple[float, float] | None
    crop_ratio: tuple[float, float]
    hflip: float

    @staticmethod
    def from_cfg(augment: dict) -> "AugmentParams":
        """From the spec JSON (`cfg["data"]["augment"]`)."""
        scale = augment["crop_scale"]
        return AugmentParams(
            crop_scale=None if scale is None else (float(scale[0]), float(scale[1])),
            crop_ratio=(float(augment["crop_ratio"][0]), float(augment["crop_ratio"][1])),
            hflip=float(augment["hflip"]),
        )


@dataclass(frozen=True)
class Geometry:
    """How to map a source image to the output square, in torchvision's order.

    Train: crop `box` (left, top, right, bottom) then resize to the output
    size. Val: resize the whole image to `resize` first (shorter side = output
    size), then crop `box` from it. Then mirror if `flip`.
    """

    box: tuple[int, int, int, int]
    flip: bool
    resize: tuple[int, int] | None = None


def center_geometry(width: int, height: int, size: int) -> Geometry:
    """Val geometry: torchvision Resize(size) (shorter side) then CenterCrop(size)."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return Geometry((left, top, left + size, top + size), False, (new_w, new_h))


def sample_geometry(
    width: int, height: int, size: int, aug: AugmentParams, seed: int, epoch: int, key: str
) -> Geometry:
    """Draw a crop and flip for one sample, as torchvision's RandomResizedCrop.get_params.

    crop_scale None means no random crop: the val geometry, still with the keyed flip.
    """
    rng = keyed_rng(seed, epoch, key, "augment")
    if aug.crop_scale is None:
        geom = center_geometry(width, height, size)
    else:
        geom = Geometry(_random_resized_crop(width, height, aug.crop_scale, aug.crop_ratio, rng), False)
    flip = rng.random() < aug.hflip
    return Geometry(geom.box, flip, geom.resize)


def _random_resized_crop(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng
) -> tuple[int, int, int, int]:
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * rng.random())
        aspect = math.exp(log_lo + (log_hi - log_lo) * rng.random())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(rng.random() * (height - h + 1)), height - h)
            left = min(int(rng.random() * (width - w + 1)), width - w)
            return (left, top, left + w, top + h)
    # Fallback: the largest central crop whose aspect lies in the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def source_box(geom: Geometry, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of the source image (in its own pixels) that becomes the output square."""
    left, top, right, bottom = geom.box
    if geom.resize is None:
        return (float(left), float(top), float(right), float(bottom))
    sx, sy = width / geom.resize[0], height / geom.resize[1]
    return (left * sx, top * sy, right * sx, bottom * sy)


def apply_geometry(img: Image.Image, geom: Geometry, size: int, resample: int) -> Image.Image:
    """Crop and resize in one pass, then mirror if asked; see `resample_box`."""
    return resample_box(img, source_box(geom, img.width, img.height), size, resample, geom.flip)


def resample_box(img: Image.Image, box: tuple[float, float, float, float], size: int, resample: int, flip: bool) -> Image.Image:
    """The source region `box` resampled to size x size in one pass (PIL's resize with a box).

    One resampling of the source region, as torchvision's resize-then-crop does for
    val; for train crops the filter also sees the pixels just outside the crop
    instead of clamping at its edge (as a crop-then-resize does), and no crop copy
    is made.
    """
    if box == (0.0, 0.0, float(img.width), float(img.height)) and img.size == (size, size):
        out = img
    else:
        out = img.resize((size, size), resample, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def draft_box(img: Image.Image, box: tuple[float, float, float, float], size: int) -> tuple[float, float, float, float]:
    """Decode a JPEG at a reduced DCT scale when its source region is at least twice the output.

    `img` must be opened and not yet loaded. PIL's draft picks the largest of 1/2,
    1/4, 1/8 that keeps the whole image at least the requested size, here the size
    at which the region becomes `size` pixels in both directions, so the bicubic
    resize that follows still only shrinks. Returns the region in the (maybe
    smaller) decoded image's pixels. Other formats, and regions under 2x, are left
    alone.
    """
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    if img.format != "JPEG" or bw < 2 * size or bh < 2 * size:
        return box
    width, height = img.size
    img.draft("RGB", (math.ceil(width * size / bw), math.ceil(height * size / bh)))
    sx, sy = img.width / width, img.height / height
    return (left * sx, top * sy, right * sx, bottom * sy)


def to_normalized_tensor(img: Image.Image, out: torch.Tensor | None = None) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] normalised with the CLIP mean/std.

    One transposing uint8 -> float32 copy into `out` (a new tensor when None; a
    loader passes the sample's row of the step's batch), then the per-channel
    normalisation in place: bit-identical to float32 arithmetic in numpy over
    [H, W, 3], and about 2x faster than a contiguous uint8 transpose followed by a
    float copy (bench/datapath.py --profile).
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    hwc = torch.from_numpy(np.asarray(img))  # a read-only view of PIL's bytes, only read
    if out is None:
        out = torch.empty(3, img.height, img.width, dtype=torch.float32)
    out.copy_(hwc.permute(2, 0, 1))
    return out.sub_(_MEAN_T).mul_(_INV_STD_T)


def image_transform(
    img: Image.Image, size: int, aug: AugmentParams | None, seed: int, epoch: int, key: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Train (aug given) or val (aug None) transform of one image to a normalised tensor.

    `img` may be opened and not yet decoded: a JPEG whose region is 2x the output
    or more is then decoded at a reduced scale (`draft_box`). The geometry is drawn
    on the full image's size either way, so drafting never changes which region a
    sample gets.
    """
    if aug is None:
        geom = center_geometry(img.width, img.height, size)
    else:
        geom = sample_geometry(img.width, img.height, size, aug, seed, epoch, key)
    box = source_box(geom, img.width, img.height)
    if getattr(img, "tile", None):  # decoded lazily and not yet: a draft is still possible
        box = draft_box(img, box, size)
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return to_normalized_tensor(resample_box(rgb, box, size, Image.Resampling.BICUBIC, geom.flip), out)


def joint_transform(
    img: Image.Image,
    seg: Image.Image | None,
    depth: Image.Image | None,
    size: int,
    aug: AugmentParams | None,
    seed: int,
    epoch: int,
    key: str,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
    """The same geometry on an image and its label maps (nearest for the maps).

    Returns the normalised image tensor and the raw map values as int64
    arrays [size, size] (class ids / depth in the PNG's units); the caller
    turns them into labels. Maps must have the image's size.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if aug is None:
        geom = center_geometry(img.width, img.height, size)
    else:
        geom = sample_geometry(img.width, img.height, size, aug, seed, epoch, key)
    image = to_normalized_tensor(apply_geometry(img, geom, size, Image.Resampling.BICUBIC), out)
    maps: list[np.ndarray | None] = []
    for m in (seg, depth):
        if m is None:
            maps.append(None)
            continue
        assert m.size == img.size, "label map size must equal the image size (checked by the caller)"
        out = apply_geometry(_label_mode(m), geom, size, Image.Resampling.NEAREST)
        maps.append(np.asarray(out).astype(np.int64))
    return image, maps[0], maps[1]


def _label_mode(m: Image.Image) -> Image.Image:
    # "L" and "P" keep their indices under NEAREST; 16-bit maps are widened to "I" for resize support.
    if m.mode in ("L", "P", "I"):
        return m
    return m.convert("I")
