"""Rendering a scene to pixels, and the area-downsampled lower scales.

Spec section "Canvas and rendering": 64x64 RGB uint8, white background, exact palette colours,
filled / outline (3 px stroke) styles; lower scales are the 64x64 image resized with an area (box)
filter to 32x32 and 16x16.

Rasterisation (project decision, no anti-aliasing at all, so every shape pixel carries the exact
palette RGB): the shape is defined in pixel-centre coordinates (pixel ``(x, y)`` has centre
``(x, y)``) so that it spans the centres of its box's first and last pixel columns/rows; a pixel is
painted when its centre lies within 0.5 px of that shape (signed distance <= 0.5).  This makes
the painted pixels fill exactly the object's box (a parsed pixel box equals the scene box, the
triangle's apex row included), and gives fill ratios of about pi/4 (circle), 1 (square) and
0.52-0.54 (triangle).  Outline style keeps the painted pixels whose signed distance is above
``0.5 - 3`` (a 3 px band along the boundary); the rest of the interior stays white.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from . import spec
from .scene import Scene, SceneObject


def _signed_distance(shape: str, box: tuple[int, int, int, int], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from pixel centres to the shape, in pixel-centre coords."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = float(x0), float(x1 - 1), float(y0), float(y1 - 1)
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    if shape == "circle":
        r = (right - left) / 2.0
        return np.hypot(xs - cx, ys - cy) - r
    if shape == "square":
        hx, hy = (right - left) / 2.0, (bottom - top) / 2.0
        dx, dy = np.abs(xs - cx) - hx, np.abs(ys - cy) - hy
        outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
        inside = np.minimum(np.maximum(dx, dy), 0.0)
        return outside + inside
    if shape == "triangle":
        verts = np.array([[cx, top], [right, bottom], [left, bottom]])  # clockwise on screen
        px = np.stack([xs, ys], axis=-1)
        dmin = np.full(xs.shape, np.inf)
        line_max = np.full(xs.shape, -np.inf)
        for k in range(3):
            a, b = verts[k], verts[(k + 1) % 3]
            e = b - a
            w = px - a
            t = np.clip((w @ e) / (e @ e), 0.0, 1.0)
            proj = w - t[..., None] * e
            dmin = np.minimum(dmin, np.hypot(proj[..., 0], proj[..., 1]))
            # outward normal for clockwise (screen) vertex order: (e_y, -e_x)
            n = np.array([e[1], -e[0]]) / np.hypot(e[0], e[1])
            line_max = np.maximum(line_max, w @ n)
        inside = line_max <= 0
        return np.where(inside, line_max, dmin)
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(obj: SceneObject, style: str = "filled", canvas: int = spec.CANVAS) -> np.ndarray:
    """Boolean [canvas, canvas] mask of the pixels an object paints in the given style."""
    mask = np.zeros((canvas, canvas), dtype=bool)
    x0, y0, x1, y1 = obj.box
    # evaluate only on the box padded by one pixel (the shape never paints outside its box)
    px0, py0 = max(x0 - 1, 0), max(y0 - 1, 0)
    px1, py1 = min(x1 + 1, canvas), min(y1 + 1, canvas)
    ys, xs = np.mgrid[py0:py1, px0:px1].astype(np.float64)
    sd = _signed_distance(obj.shape, obj.box, xs, ys)
    local = sd <= 0.5
    if style == "outline":
        local &= sd > 0.5 - spec.OUTLINE_STROKE
    elif style != "filled":
        raise ValueError(f"unknown style {style!r}")
    mask[py0:py1, px0:px1] = local
    return mask


def render(scene: Scene, canvas: int = spec.CANVAS) -> np.ndarray:
    """Render a scene: uint8 [64, 64, 3], white background, exact palette on every shape pixel."""
    img = np.empty((canvas, canvas, 3), dtype=np.uint8)
    img[...] = spec.BACKGROUND
    for obj in scene.objects:
        if obj.color not in spec.PALETTE:
            raise ValueError(f"unknown colour {obj.color!r}")
        img[shape_mask(obj, scene.style, canvas)] = spec.PALETTE[obj.color]
    return img


def downscale(image: np.ndarray, size: int) -> np.ndarray:
    """Area (box-filter) resize of a square image to ``size`` x ``size``; exact block mean.

    The size must divide the image side.  Returns uint8, the mean rounded half up.
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"expected a square image, got {h}x{w}")
    if size <= 0 or h % size:
        raise ValueError(f"size {size} does not divide the image side {h}")
    k = h // size
    blocks = img.astype(np.float64).reshape(size, k, size, k, *img.shape[2:])
    mean = blocks.mean(axis=(1, 3))
    return np.floor(mean + 0.5).astype(np.uint8)


def render_scales(scene: Scene, sizes: Sequence[int] = spec.SCALES) -> dict[int, np.ndarray]:
    """The scene at every size in ``sizes``: {size: uint8 [size, size, 3]} (area-downsampled)."""
    full = render(scene)
    return {int(s): (full.copy() if s == spec.CANVAS else downscale(full, int(s))) for s in sizes}


def to_pil(image: np.ndarray):  # pragma: no cover - convenience
    """A Pillow image of an uint8 [H, W, 3] array (for saving/inspection)."""
    from PIL import Image

    return Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")


def contact_sheet(images: Iterable[np.ndarray], columns: int = 8, pad: int = 2) -> np.ndarray:
    """Tile equally sized images into one uint8 array (grey padding), for quick inspection."""
    imgs = [np.asarray(i, dtype=np.uint8) for i in images]
    if not imgs:
        raise ValueError("no images")
    h, w = imgs[0].shape[:2]
    rows = (len(imgs) + columns - 1) // columns
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 128, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, columns)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return sheet
