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
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .keyed import keyed_rng

# OpenAI CLIP's normalisation, used by open_clip and the VeCLIP processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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


def apply_geometry(img: Image.Image, geom: Geometry, size: int, resample: int) -> Image.Image:
    """Resize/crop/resize as geom says, ending at size x size, then mirror if asked."""
    if geom.resize is not None and geom.resize != img.size:
        img = img.resize(geom.resize, resample)
    out = img.crop(geom.box)
    if out.size != (size, size):
        out = out.resize((size, size), resample)
    if geom.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] normalised with the CLIP mean/std.

    Transposed as uint8 and normalised in place per channel plane in torch: 6x faster
    than the same float32 arithmetic in numpy over [H, W, 3] (bench/datapath.py), and
    bit-identical to it.
    """
    chw = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()
    return chw.float().sub_(_MEAN_T).mul_(_INV_STD_T)


def image_transform(
    img: Image.Image, size: int, aug: AugmentParams | None, seed: int, epoch: int, key: str
) -> torch.Tensor:
    """Train (aug given) or val (aug None) transform of one image to a normalised tensor."""
    img = img.convert("RGB")
    if aug is None:
        geom = center_geometry(img.width, img.height, size)
    else:
        geom = sample_geometry(img.width, img.height, size, aug, seed, epoch, key)
    return to_normalized_tensor(apply_geometry(img, geom, size, Image.Resampling.BICUBIC))


def joint_transform(
    img: Image.Image,
    seg: Image.Image | None,
    depth: Image.Image | None,
    size: int,
    aug: AugmentParams | None,
    seed: int,
    epoch: int,
    key: str,
) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
    """The same geometry on an image and its label maps (nearest for the maps).

    Returns the normalised image tensor and the raw map values as int64
    arrays [size, size] (class ids / depth in the PNG's units); the caller
    turns them into labels. Maps must have the image's size.
    """
    img = img.convert("RGB")
    if aug is None:
        geom = center_geometry(img.width, img.height, size)
    else:
        geom = sample_geometry(img.width, img.height, size, aug, seed, epoch, key)
    image = to_normalized_tensor(apply_geometry(img, geom, size, Image.Resampling.BICUBIC))
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
