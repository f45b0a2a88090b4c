"""Preset lookup for Python callers and tests.

The orchestrator resolves presets into the config it hands workers; these
helpers do the same from the shared presets.json so scripts and tests can
write resolve_image_preset("vit-b16", image_size=384) instead of full dicts.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

PRESETS_PATH = Path(__file__).with_name("presets.json")

_IMAGE_KEYS = {"family", "image_size", "width", "depth", "heads", "patch", "mlp_ratio", "layers", "widths"}
_TEXT_KEYS = {"width", "depth", "heads", "mlp_ratio", "context_length", "causal"}


@functools.lru_cache(maxsize=1)
def _presets() -> dict[str, Any]:
    return json.loads(PRESETS_PATH.read_text())


def _resolve(kind: str, name: str, allowed: set[str], overrides: dict[str, Any]) -> dict[str, Any]:
    table = _presets()[kind]
    if name not in table or name.startswith("_"):
        known = ", ".join(sorted(k for k in table if not k.startswith("_")))
        raise ConfigError(f"unknown preset {name!r} (known: {known})", f"model.{kind}.preset")
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ConfigError(f"unknown field(s) {bad} for a {kind} tower", f"model.{kind}")
    cfg = copy.deepcopy(table[name])
    cfg.update(overrides)
    cfg["preset"] = name
    return cfg


def resolve_image_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """An ImageTowerSpec dict from a presets.json image preset, with field overrides applied."""
    return _resolve("image", name, _IMAGE_KEYS, overrides)


def resolve_text_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """A TextTowerSpec dict from a presets.json text preset, with field overrides applied."""
    return _resolve("text", name, _TEXT_KEYS, overrides)


def resolve_model_cfg(image: str | None = None, text: str | None = None, embed_dim: int | None = None,
                      tokenizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """A full ModelSpec dict; unnamed parts take presets.json "defaults" and the byte tokenizer."""
    defaults = _presets()["defaults"]
    return {
        "image": resolve_image_preset(image or defaults["image"]),
        "text": resolve_text_preset(text or defaults["text"]),
        "embed_dim": embed_dim if embed_dim is not None else defaults["embed_dim"],
        "tokenizer": tokenizer if tokenizer is not None else {"type": "byte", "vocab": None},
    }
