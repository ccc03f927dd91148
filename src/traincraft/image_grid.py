"""Images for people to look at: model inputs turned into displayable pixels, and tiled into one
PNG grid. Shared by the augmentation preview (``plots/augment.png``) and the report's most
confident mistakes."""

from __future__ import annotations

from typing import Any

import numpy as np


def displayable(images: Any, *, stretch: bool = False) -> np.ndarray:
    """``(n, C, H, W)`` images (a tensor or array) as uint8 ``(n, H, W, C)`` pixels.

    uint8 pixels are kept as they are. Floats are read as values in [0, 1] (clamped), or, with
    ``stretch``, each image's own range is stretched to [0, 255] (scaled inputs, whose values
    are no longer on a pixel scale).

    Example:
        >>> displayable(torch.rand(4, 1, 8, 8)).shape
        (4, 8, 8, 1)
    """
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if stretch:
            low = x.min(axis=(1, 2, 3), keepdims=True)
            span = x.max(axis=(1, 2, 3), keepdims=True) - low
            x = (x - low) / np.where(span > 0, span, 1.0)
        x = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def tile(pixels: np.ndarray, *, columns: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 ``(n, H, W, C)`` pixels tiled row by row on white, ``pad`` pixels between them."""
    n, height, width, channels = pixels.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.full((rows * (height + pad), columns * (width + pad), channels), 255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, columns)
        top, left = r * (height + pad) + pad // 2, c * (width + pad) + pad // 2
        grid[top:top + height, left:left + width] = image
    return grid


def png(grid: np.ndarray, *, min_side: int = 256) -> bytes:
    """A PNG of uint8 ``(H, W, C)`` pixels, enlarged by a whole factor (nearest neighbour, so each
    pixel stays sharp) until its longer side reaches ``min_side``."""
    import io

    from PIL import Image

    picture = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    scale = max(1, min_side // max(grid.shape[:2]))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
