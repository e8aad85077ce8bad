"""Constants of the demo generator: anomaly kinds, the reference length scale, texture names and part colours."""

from __future__ import annotations

import math

import numpy as np

ANOMALY_TYPES = ("foreign_body", "missing_component", "scratch", "oil_leak")
FOREIGN_KINDS = ("stone", "rag", "bottle", "wire", "bolt", "paper")

_REF_DIAG = math.hypot(1920, 1200)  # lengths in the models are given at 1920 x 1200 and scale with the diagonal
_F32 = np.float32

_PRIMARY_TEXTURES = ("brick", "gravel", "grass", "moon")
_PRIMARY_WEIGHTS = (0.2, 0.35, 0.2, 0.25)  # brick's mortar lines read as a wall: use it less
_SECONDARY_TEXTURES = ("camera", "coffee", "rocket", "chelsea", "astronaut", "immunohistochemistry")

# dark, dirty undercarriage colours (RGB, before shading and grime)
_PAINTS = {
    "steel": (105, 105, 101),
    "dark_grey": (64, 65, 66),
    "black": (40, 40, 41),
    "rust": (92, 70, 54),
    "green": (60, 68, 57),
    "primer": (88, 54, 44),
    "blue_grey": (70, 78, 86),
    "yellow": (132, 116, 60),
}
_PAINT_WEIGHTS = {"steel": 3, "dark_grey": 4, "black": 4, "rust": 2, "green": 1, "primer": 1, "blue_grey": 1.5, "yellow": 0.5}
_BOLT_COLORS = {"zinc": (146, 146, 138), "steel": (112, 112, 108), "black": (46, 46, 46), "rusty": (102, 80, 62)}
_CABLE_COLORS = {"black": (34, 34, 35), "orange": (150, 86, 42), "grey": (92, 92, 90), "blue": (38, 52, 80)}
