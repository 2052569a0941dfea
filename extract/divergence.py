"""How far two sets of targets are apart: KL divergence of class distributions (from logits or
probabilities), cosine similarity of embeddings, and what the shards' int8 encoding costs an
embedding. For ``inspect --verify``, the consistency check and the benchmarks."""

from __future__ import annotations

import numpy as np

from distinit.pipeline.shards import dequantize, quantize


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row, in nats."""
    return kl_of_distributions(
        softmax(p_logits.astype(np.float64)), softmax(q_logits.astype(np.float64))
    )


def kl_of_distributions(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of two ``(N, C)`` probability arrays, in nats (float64)."""
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    log_p = np.log(np.clip(p64, 1e-30, None))
    log_q = np.log(np.clip(q64, 1e-30, None))
    return (p64 * (log_p - log_q)).sum(axis=-1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-30)


def embedding_storage(fp32: np.ndarray) -> dict[str, float]:
    """What the shard encoding (:func:`~distinit.pipeline.shards.quantize`) costs an embedding
    ``(N, D)``: bytes per frame and per dimension, and cosine similarity to fp32."""
    cos = cosine_rows(fp32, dequantize(*quantize(fp32)))
    dim = int(fp32.shape[1])
    per_frame = dim + 8  # int8 values + float32 scale and offset
    return {
        "dim": dim,
        "bytes_per_frame": per_frame,
        "bytes_per_dim": per_frame / dim,
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }
