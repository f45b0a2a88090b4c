"""Captioner and fusion plugins: the interface, and loading `module:factory` entry points.

A recaption stage captions images with a Captioner and fuses each caption
with the sample's AltText with a Fuser. Both come from factories named
`module:factory`: `factory(args, ctx) -> Captioner` (or `-> Fuser`), where
`args` is the spec's `args` mapping (a dict of scalars) and `ctx` a
CaptionerContext. The built-in ones are `clipfleet_worker.captioning.builtin:make`
(`captioner: {checkpoint: ...}`) and `clipfleet_worker.captioning.fusion:make_none`
/ `:make_template` (`fusion: none | template`).

Contract: `caption` gets a batch of PIL images and their AltTexts (same
length, in the shard's sample order) and returns one caption per image;
`fuse` gets the captions and AltTexts and returns one fused caption each.
Output must be a pure function of the inputs and `ctx.seed` (greedy or
seeded decoding): a restarted rank rewrites a shard byte for byte.
Standard library only at import time; torch is imported by plugins that need it.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import PIL.Image
    import torch


@dataclass(frozen=True)
class CaptionerContext:
    """What a plugin factory knows of the rank it runs on."""

    device: "torch.device"
    seed: int
    rank: int
    world_size: int
    run_dir: str


class Captioner(Protocol):
    """Images (with their AltTexts) in, one caption per image out."""

    def caption(self, images: list["PIL.Image.Image"], alttexts: list[str]) -> list[str]: ...


class Fuser(Protocol):
    """Captions and AltTexts in, one fused caption per pair out."""

    def fuse(self, captions: list[str], alttexts: list[str]) -> list[str]: ...


class PluginError(Exception):
    """An entry point that cannot be loaded (a user error: bad spec or missing module)."""


def resolve_entry_point(entry_point: str) -> Callable[..., Any]:
    """The callable `module:factory` names; PluginError (one line) when it does not import or is not callable."""
    module_name, sep, attr = entry_point.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{entry_point!r}: expected module:factory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise PluginError(f"{entry_point}: no module named {err.name!r}") from None
    except Exception as err:  # the module itself raised on import
        raise PluginError(f"{entry_point}: importing {module_name} failed: {type(err).__name__}: {err}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise PluginError(f"{entry_point}: module {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise PluginError(f"{entry_point}: {attr} is not callable")
    return factory


def load_captioner(spec: dict, ctx: CaptionerContext) -> Captioner:
    """A captioner from `{"entry_point": ..., "args": {...}}` (Assignment.captioner_json)."""
    plugin = resolve_entry_point(str(spec["entry_point"]))(dict(spec.get("args") or {}), ctx)
    if not callable(getattr(plugin, "caption", None)):
        raise PluginError(f"{spec['entry_point']}: the factory returned {type(plugin).__name__}, which has no caption(images, alttexts)")
    return plugin


def load_fuser(spec: dict, ctx: CaptionerContext) -> Fuser:
    """A fuser from `{"entry_point": ..., "args": {...}}` (Assignment.fusion_json)."""
    plugin = resolve_entry_point(str(spec["entry_point"]))(dict(spec.get("args") or {}), ctx)
    if not callable(getattr(plugin, "fuse", None)):
        raise PluginError(f"{spec['entry_point']}: the factory returned {type(plugin).__name__}, which has no fuse(captions, alttexts)")
    return plugin


def check_main(entry_point: str) -> int:
    """`python -m clipfleet_worker plugins check module:factory`: exit 0, or 2 with one line on stderr."""
    try:
        resolve_entry_point(entry_point)
    except PluginError as err:
        print(f"clipfleet plugins: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
