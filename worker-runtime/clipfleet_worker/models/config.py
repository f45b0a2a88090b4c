"""Typed tower configs parsed from the spec's JSON (ImageTowerSpec / TextTowerSpec in spec.ts).

The orchestrator validates specs before a worker starts; these parsers exist
so Python callers building dicts by hand get the same one-line ConfigError
naming the field instead of a shape error deep inside a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError


def _get(d: Mapping[str, Any], key: str, field: str) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError("required field is missing", f"{field}.{key}")
    return d[key]


def _pos_int(d: Mapping[str, Any], key: str, field: str) -> int:
    v = _get(d, key, field)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"expected a positive integer, got {v!r}", f"{field}.{key}")
    return v


def _pos_float(d: Mapping[str, Any], key: str, field: str) -> float:
    v = _get(d, key, field)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"expected a positive number, got {v!r}", f"{field}.{key}")
    return float(v)


def _int_list(d: Mapping[str, Any], key: str, field: str, n: int) -> tuple[int, ...]:
    v = _get(d, key, field)
    if not isinstance(v, (list, tuple)) or len(v) != n or not all(isinstance(x, int) and x > 0 for x in v):
        raise ConfigError(f"expected {n} positive integers, got {v!r}", f"{field}.{key}")
    return tuple(v)


def _divides(width: int, heads: int, field: str) -> None:
    if width % heads:
        raise ConfigError(f"width {width} is not divisible by heads {heads}", f"{field}.heads")


@dataclass(frozen=True)
class VitConfig:
    """ViT image tower: square images of image_size px cut into patch x patch tokens."""

    image_size: int
    width: int
    depth: int
    heads: int
    patch: int
    mlp_ratio: float

    @staticmethod
    def from_spec(d: Mapping[str, Any], field: str = "model.image") -> "VitConfig":
        """Parse an ImageTowerSpec dict of family "vit"."""
        cfg = VitConfig(
            image_size=_pos_int(d, "image_size", field),
            width=_pos_int(d, "width", field),
            depth=_pos_int(d, "depth", field),
            heads=_pos_int(d, "heads", field),
            patch=_pos_int(d, "patch", field),
            mlp_ratio=_pos_float(d, "mlp_ratio", field),
        )
        _divides(cfg.width, cfg.heads, field)
        if cfg.image_size % cfg.patch:
            raise ConfigError(f"image_size {cfg.image_size} is not a multiple of patch {cfg.patch}", f"{field}.patch")
        return cfg


@dataclass(frozen=True)
class MciConfig:
    """MobileCLIP-style hybrid: 4 stages of `layers[i]` blocks at `widths[i]` channels, attention in stage 4."""

    image_size: int
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    heads: int
    mlp_ratio: float

    @staticmethod
    def from_spec(d: Mapping[str, Any], field: str = "model.image") -> "MciConfig":
        """Parse an ImageTowerSpec dict of family "mci"."""
        cfg = MciConfig(
            image_size=_pos_int(d, "image_size", field),
            layers=_int_list(d, "layers", field, 4),
            widths=_int_list(d, "widths", field, 4),
            heads=_pos_int(d, "heads", field),
            mlp_ratio=_pos_float(d, "mlp_ratio", field),
        )
        _divides(cfg.widths[3], cfg.heads, field)
        return cfg


@dataclass(frozen=True)
class TextConfig:
    """Text transformer: causal (CLIP) or bidirectional attention over context_length tokens."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float
    context_length: int
    causal: bool

    @staticmethod
    def from_spec(d: Mapping[str, Any], field: str = "model.text") -> "TextConfig":
        """Parse a TextTowerSpec dict."""
        causal = _get(d, "causal", field)
        if not isinstance(causal, bool):
            raise ConfigError(f"expected true or false, got {causal!r}", f"{field}.causal")
        cfg = TextConfig(
            width=_pos_int(d, "width", field),
            depth=_pos_int(d, "depth", field),
            heads=_pos_int(d, "heads", field),
            mlp_ratio=_pos_float(d, "mlp_ratio", field),
            context_length=_pos_int(d, "context_length", field),
            causal=causal,
        )
        _divides(cfg.width, cfg.heads, field)
        return cfg


def image_family(d: Mapping[str, Any], field: str = "model.image") -> str:
    """The tower family of an ImageTowerSpec dict ("vit" or "mci")."""
    family = _get(d, "family", field)
    if family not in ("vit", "mci"):
        raise ConfigError(f'expected "vit" or "mci", got {family!r}', f"{field}.family")
    return family
