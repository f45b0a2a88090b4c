"""One sample read and decoded on a loader thread: members, caption choice, image transform, label maps."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .captions import all_captions, caption_sources, choose_caption, choose_caption_pair
from .loaderconfig import DEPTH_EXT, IMAGE_EXTS, SEG_EXT, LoaderConfig, Tokenize
from .members import MemberError, decoded_members
from .shardset import ShardSet
from .transforms import image_transform, joint_transform


@dataclass
class _Sample:
    key: str
    reason: str | None = None  # why it was skipped; None when usable
    image: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    tokens_b: torch.Tensor | None = None
    source: str | None = None
    captions: dict[str, list[str]] = field(default_factory=dict)
    label: int = -1
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    out_of_range: int = 0


def _open_image(data: bytes, load: bool = True) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if load:
        img.load()
    return img


def _find_image(members: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in members:
            return members[ext]
    return None


def _label_of(members: dict[str, bytes]) -> int:
    raw = members.get("json")
    if raw is not None:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            for name in ("label", "cls"):
                if isinstance(meta.get(name), int):
                    return int(meta[name])
    cls = members.get("cls")
    if cls is not None:
        try:
            return int(cls.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return -1
    return -1


def _decode_sample(
    shardset: ShardSet,
    cfg: LoaderConfig,
    tokenize: Tokenize | None,
    s: int,
    i: int,
    epoch: int,
    eval_sources: Sequence[str] | None,
    slot: torch.Tensor | None = None,
) -> _Sample:
    """Read and decode one sample. DataError for a broken shard; a skip reason otherwise.

    With `slot` (the sample's [3, S, S] row of its step's image tensor) the image is
    written there and `image` stays None; see `_zero_skipped`.
    """
    idx = shardset.index(s)
    key = idx.key(i)
    out = _Sample(key=key)
    try:
        members = decoded_members(idx.read(i))
    except MemberError as e:
        out.reason = e.reason
        return out
    data = _find_image(members)
    if data is None:
        out.reason = "no image"
        return out
    if eval_sources is not None:
        out.captions = all_captions(members, eval_sources)
        out.label = _label_of(members)
    elif cfg.wants_captions:
        available = caption_sources(members, cfg.captions, cfg.seed, epoch, key, cfg.empty_captions == "keep")
        if cfg.caption_mode == "both":
            pair = choose_caption_pair(available, cfg.captions, cfg.seed, epoch, key)
            if pair is None:
                out.reason = "no caption"
                return out
            (out.source, text), (_, text_b) = pair
        else:
            choice = choose_caption(available, cfg.captions, cfg.seed, epoch, key)
            if choice is None:
                out.reason = "no caption"
                return out
            out.source, text = choice
            text_b = None
    dense = cfg.dense
    if dense is None:
        try:
            # Decoded inside the transform, which may ask for a DCT-scaled decode of a big JPEG.
            img = _open_image(data, load=False)
            out.image = image_transform(img, cfg.image_size, cfg.augment, cfg.seed, epoch, key, out=slot)
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt bytes; the sample is skipped
            out.reason = "undecodable image"
            return out
    else:
        ext = SEG_EXT if dense == "seg" else DEPTH_EXT
        if ext not in members:
            out.reason = f"no {ext}"
            return out
        try:
            img = _open_image(data)
        except Exception:  # noqa: BLE001 - see above
            out.reason = "undecodable image"
            return out
        try:
            label_map = _open_image(members[ext])
        except Exception:  # noqa: BLE001 - see above
            out.reason = f"undecodable {ext}"
            return out
        _check_label_map(label_map, img, dense, shardset.shards[s][0], key)
        seg_img, depth_img = (label_map, None) if dense == "seg" else (None, label_map)
        out.image, seg, depth = joint_transform(
            img, seg_img, depth_img, cfg.image_size, cfg.augment, cfg.seed, epoch, key, out=slot
        )
        if seg is not None:
            assert cfg.num_classes is not None
            bad = (seg >= cfg.num_classes) & (seg != cfg.ignore_index)
            out.out_of_range = int(bad.sum())
            seg[bad] = cfg.ignore_index
            out.seg = seg
        if depth is not None:
            out.depth = depth.astype(np.float32) / 1000.0
    if slot is not None:
        out.image = None  # it lives in the step's tensor
    if eval_sources is None and cfg.wants_captions and tokenize is not None:
        out.tokens = tokenize([text])[0]
        if text_b is not None:
            out.tokens_b = tokenize([text_b])[0]
    return out


def _check_label_map(m: Image.Image, img: Image.Image, dense: str, shard: str, key: str) -> None:
    if dense == "seg" and m.mode not in ("L", "P", "I", "I;16"):
        raise DataError(
            f"seg.png must be single-channel class ids, got mode {m.mode}",
            shard=shard,
            key=key,
        )
    if dense == "depth" and m.mode not in ("I", "I;16"):
        raise DataError(
            f"depth.png must be 16-bit millimetres, got mode {m.mode}",
            shard=shard,
            key=key,
        )
    if m.size != img.size:
        raise DataError(
            f"{dense} map is {m.size[0]}x{m.size[1]} but the image is "
            f"{img.size[0]}x{img.size[1]}",
            shard=shard,
            key=key,
        )
