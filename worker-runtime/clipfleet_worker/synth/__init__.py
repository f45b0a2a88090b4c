"""Synthetic VeCLIP-style dataset: scenes of coloured shapes with AltText, VeCap, masks and depth.

The project's headline experiment (better captions -> better retrieval and a
better dense backbone) needs data where caption quality is the controlled
variable. Every image shows 1-4 objects (shape, colour, size, 3x3 grid
position) over a textured background. The `.json` VeCap names every visible
object's attributes in varied templates; the `.txt` AltText imitates web alt
text: mostly uninformative (file names, marketing, stock phrases) and
sometimes one true attribute, so it carries only a weak signal. `seg.png`
(class per pixel, occlusion respected) and `depth.png` (16-bit millimetres:
a background plane with a gradient, nearer domes for objects) come from the
same layout, so the dense fine-tune learns what the captions described.

Output layout (WebDataset): `{split}-{i:05d}.tar` with keys
`{split}{index:08d}` holding .jpg, .txt, .json, .syn.json, .seg.png,
.depth.png; `classes.json`, `sizes.json` and `synth.json` (the parameters,
written last as the completion marker) at the root. Byte-identical for a
given seed: every draw comes from a generator seeded by (seed, split, index).
"""

from .captions import alt_text, describe
from .dataset import (
    SYNTH_DEFAULTS,
    SYNTH_VERSION,
    SynthParams,
    SynthResult,
    class_names,
    default_val_shards,
    encode_scene,
    ensure,
    generate,
    shard_layout,
)
from .render import Scene, render_scene
from .vocabulary import BACKGROUND_COLOURS, COLOURS, POSITIONS, SHAPES, SIZES, SIZE_DEPTH, TEXTURES

__all__ = [
    "BACKGROUND_COLOURS",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SIZE_DEPTH",
    "SYNTH_DEFAULTS",
    "SYNTH_VERSION",
    "TEXTURES",
    "Scene",
    "SynthParams",
    "SynthResult",
    "alt_text",
    "class_names",
    "default_val_shards",
    "describe",
    "encode_scene",
    "ensure",
    "generate",
    "render_scene",
    "shard_layout",
]
