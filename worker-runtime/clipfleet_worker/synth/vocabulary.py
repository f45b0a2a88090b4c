"""What a synthetic scene can hold: shapes, colours, sizes, positions, backgrounds, textures."""

from __future__ import annotations

import math

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 35),
    "green": (45, 165, 55),
    "cyan": (35, 200, 215),
    "blue": (35, 70, 215),
    "purple": (135, 55, 185),
    "pink": (245, 125, 190),
}
# Object radius as a fraction of the image side, per size word.
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.17, "large": 0.25}
# Distance from the camera (metres) per size word: bigger objects are nearer, so depth agrees with size.
SIZE_DEPTH: dict[str, tuple[float, float]] = {"small": (3.2, 4.0), "medium": (2.2, 3.1), "large": (1.2, 2.1)}
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "light gray": (196, 196, 196),
    "dark gray": (58, 58, 62),
    "beige": (222, 206, 170),
    "brown": (122, 88, 62),
    "olive": (110, 110, 68),
    "slate": (88, 98, 118),
}
TEXTURES = ("noise", "stripes", "gradient", "checker")

# Unoccluded area of each shape in units of radius^2, for the visibility test.
SHAPE_AREA = {
    "circle": math.pi,
    "square": 2.56,
    "triangle": 1.572,
    "star": 1.455,
    "ring": 2.136,
    "cross": 2.204,
    "diamond": 1.54,
    "hexagon": 2.598,
}
MIN_VISIBLE = 0.35
SPLIT_CODE = {"train": 0, "val": 1}
JPEG_QUALITY = 90
