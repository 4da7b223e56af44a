"""Counter-based random numbers: every draw is a pure function of (seed, split, class, index).

Why not ``torch.Generator``: a generator's stream depends on how many numbers were drawn before,
so image content would change with batch size, sharding and device. Here each image gets a
64-bit key hashed from its identity, and each random number is a hash of (key, stream, counter),
like Philox/Random123 but written with plain int64 tensor ops so it runs (bit-identically) on CPU
and GPU and inside ``torch.compile``.

The mixer is Chris Wellons' ``lowbias32`` (https://nullprogram.com/blog/2018/07/31/). 32-bit
products are split into 16-bit halves so no int64 product overflows (signed overflow is undefined
behaviour in C++; we never rely on it).
"""

from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
SPLITS = {"train": 0, "val": 1, "test": 2, "stream": 3}


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 0 <= x < 2**32 without overflowing int64."""
    lo = (x & 0xFFFF) * c  # < 2**48
    hi = ((x >> 16) * (c & 0xFFFF)) << 16  # < 2**48
    return (lo + hi) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash of int64 tensors holding values in [0, 2**32)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(h: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold one more 32-bit word into a running hash (sponge-like chaining)."""
    return mix32((h ^ value) + 0x9E3779B9)


def seed_words(seed: int) -> tuple[int, int]:
    """A user seed (any Python int, folded to 64 bits) as its low and high 32-bit words."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & _M32, seed >> 32


def image_keys(
    seed: int | torch.Tensor, split: int | torch.Tensor, labels: torch.Tensor,
    indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent 32-bit keys per image (64 bits: no collisions between datasets).

    Args:
        seed: user seed (any Python int; folded to 64 bits), or its ``seed_words`` as a (2,)
            int64 tensor (a CUDA graph takes the seed as an input, not a baked-in constant).
        split: split id (see ``SPLITS``), an int or a (B,) tensor.
        labels: (B,) int64 class ids.
        indices: (B,) int64 image index within (split, class).

    Returns:
        (k1, k2): two (B,) int64 tensors with values in [0, 2**32).
    """
    lo, hi = (seed[0], seed[1]) if isinstance(seed, torch.Tensor) else seed_words(seed)
    labels = labels.to(torch.int64)
    indices = indices.to(torch.int64)
    keys = []
    for lane in (0x243F6A88, 0x85A308D3):  # two lanes with different initial values
        h = torch.full_like(indices, lane)
        for word in (lo, hi, split, 0x5EED):
            h = _absorb(h, word)
        h = _absorb(h, labels)
        h = _absorb(h, indices & _M32)
        h = _absorb(h, indices >> 32)
        keys.append(h)
    return keys[0], keys[1]


def _to_unit(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """24 random bits -> float in the open interval (0, 1) (safe for log)."""
    return ((h >> 8).to(dtype) + 0.5) * (1.0 / 16777216.0)


def uniform(keys: tuple[torch.Tensor, torch.Tensor], stream: int, dtype=torch.float32):
    """One U(0,1) number per image for random stream ``stream`` (an int naming the draw)."""
    k1, k2 = keys
    h = mix32(k1 ^ mix32(k2 + stream * 0x632BE5AB))
    return _to_unit(h, dtype)


def uniform_block(keys: tuple[torch.Tensor, torch.Tensor], n_streams: int,
                  dtype=torch.float32) -> torch.Tensor:
    """(B, n_streams) U(0,1): column j equals ``uniform(keys, j + 1)`` bit for bit.

    One hash over a block instead of one small hash per stream: under ``torch.compile`` the
    graph shrinks from thousands of integer ops to a few dozen (compile time), and eager GPU
    runs one kernel per op instead of one per op and stream (launch overhead).
    """
    k1, k2 = keys
    streams = torch.arange(1, n_streams + 1, device=k1.device, dtype=torch.int64)
    h = mix32(k1[:, None] ^ mix32(k2[:, None] + streams[None, :] * 0x632BE5AB))
    return _to_unit(h, dtype)


def pixel_hash_tables(shape: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image-independent half of :func:`pixel_normal`'s hash, (1, H, W) each.

    Computed once per shape and reused: it halves the per-image integer work and keeps it out of
    compiled graphs.
    """
    n = shape[0] * shape[1]
    counter = torch.arange(n, device=device, dtype=torch.int64).view(1, *shape)
    return mix32(counter * 2 + 0x1B873593), mix32(counter * 2 + 0x1B873594)


def pixel_noise_base(keys: tuple[torch.Tensor, torch.Tensor], stream: int) -> torch.Tensor:
    """(B,) per-image half of the pixel-noise hash (the fused CUDA kernel takes it as input)."""
    k1, k2 = keys
    return mix32(k1 ^ mix32(k2 + stream * 0x632BE5AB))


def pixel_normal(
    keys: tuple[torch.Tensor, torch.Tensor], stream: int, shape: tuple[int, int],
    dtype=torch.float32, tables: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` per image, (B, *shape), by Box-Muller.

    Uses only log, sqrt, cos and arithmetic: those ops give the same bits in PyTorch's vectorised
    and scalar CPU paths (atan2/pow/atanh do not), so noise does not depend on batch layout.

    Args:
        tables: ``pixel_hash_tables(shape)`` when the caller caches them.
    """
    t1, t2 = tables if tables is not None else pixel_hash_tables(shape, keys[0].device)
    base = pixel_noise_base(keys, stream).view(-1, 1, 1)
    u1, u2 = _to_unit(mix32(base ^ t1), dtype), _to_unit(mix32(base ^ t2), dtype)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
