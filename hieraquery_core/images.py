"""Image conversions and checks shared by the pipeline, the command line and the ComfyUI nodes.

Inside the library an image batch is a float tensor [B, 3, H, W] in [0, 1] ("pixels"); the DiT works on
[-1, 1]. ComfyUI's IMAGE is [B, H, W, C] in [0, 1]; PIL images and uint8 arrays are accepted too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import HieraQueryError, require


def as_pixels(images: torch.Tensor | np.ndarray | Image.Image | Sequence[Image.Image], channels_last: bool | None = None) -> torch.Tensor:
    """Any supported image input -> float [B, 3, H, W] in [0, 1], with one clear error for bad input.

    ``channels_last`` says whether a 4-D tensor is [B, H, W, C] (ComfyUI) or [B, C, H, W]; by default it
    is guessed from which axis has 1, 3 or 4 entries.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        require(len(images) > 0, "no images were given")
        return torch.cat([as_pixels(np.asarray(img), channels_last=True) for img in images])
    if isinstance(images, np.ndarray):
        array = images
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        channels_last = True if channels_last is None else channels_last
    require(isinstance(images, torch.Tensor), f"unsupported image type {type(images).__name__}; pass a PIL image, a numpy array or a torch tensor")
    x = images
    if x.dim() == 2:
        x = x[None, :, :, None]
        channels_last = True
    if x.dim() == 3:
        x = x[None]
    require(x.dim() == 4, f"an image batch must have 3 or 4 dimensions, got shape {tuple(images.shape)}; expected [B, H, W, C] or [B, C, H, W]")
    if channels_last is None:
        channels_last = x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    channels = x.shape[1]
    if channels == 4:
        raise HieraQueryError("the image has an alpha channel (4 channels); composite it onto a background or drop the alpha channel first (RGB only)")
    require(channels in (1, 3), f"the image has {channels} channels; expected RGB (3) or greyscale (1), shape {tuple(images.shape)}")
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.float()
    if x.numel() and x.max() > 1.0 + 1e-3:
        raise HieraQueryError(f"image values reach {x.max().item():.1f}; expected floats in [0, 1] (or uint8 arrays)")
    return x.clamp(0, 1).contiguous()


def resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [B, 3, H, W]: area (box) filter when shrinking, as ShapesWorld's scales are made; bicubic when growing."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    if size[0] <= pixels.shape[-2] and size[1] <= pixels.shape[-1]:
        return F.interpolate(pixels, size=size, mode="area")
    return F.interpolate(pixels, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def to_signed(pixels: torch.Tensor) -> torch.Tensor:
    return pixels * 2.0 - 1.0


def to_unsigned(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1.0) / 2.0).clamp(0, 1)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] -> PIL images."""
    array = (pixels.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def to_channels_last(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> ComfyUI's IMAGE layout [B, H, W, 3]."""
    return pixels.permute(0, 2, 3, 1).contiguous()
