"""The targets' encoding on disk: per-row affine int8 (``1 + 8/D`` bytes per dimension)."""

from __future__ import annotations

import numpy as np


def quantize(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row affine int8: returns ``(q, scale, offset)`` with ``logits ≈ q * scale + offset``."""
    x = np.asarray(logits, dtype=np.float32)
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    scale = (hi - lo) / 255.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint((x - lo[:, None]) / scale[:, None]) - 128.0
    offset = (lo + 128.0 * scale).astype(np.float32)
    return np.clip(q, -128, 127).astype(np.int8), scale, offset


def dequantize(q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None] + offset[:, None]
