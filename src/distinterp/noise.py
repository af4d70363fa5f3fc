"""Layout-invariant Gaussian noise: a dense N(0, 1) tensor defined block by block, so a shard can draw
exactly its slice of it without ever materialising the whole tensor.

Two noise streams exist (`sample(noise=...)`):

- "devinterp": devinterp's own, each parameter's full noise tensor drawn from the global torch RNG in
  slot order after seeding init_seed + chain. Bitwise devinterp; one process must hold the whole tensor,
  so only fsdp_size=1 can use it (the default there).
- "blocked": parameter j's flattened noise tensor at SGLD step t is cut into blocks of `block` elements;
  block b is `torch.randn` from a generator seeded by a hash of (init_seed, chain, "step", t, j, b) on
  the parameter's device type (the last block is shorter). init_noise uses ("init", j) instead of
  ("step", t, j). A shard holding flat elements [lo, hi) draws only the blocks that overlap it and
  slices them, so every layout (fsdp_size 1, 2, 4, ...) adds the same numbers (the default, and
  required, for fsdp_size > 1). j indexes `model.named_parameters()`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Literal

import torch

NoiseStream = Literal["devinterp", "blocked"]
NOISE_STREAMS: tuple[str, ...] = ("devinterp", "blocked")
DEFAULT_BLOCK = 1 << 20  # elements per block: a shard draws at most two blocks beyond its own slice
_STEP, _INIT = 0, 1


def resolve_noise(noise: str | None, fsdp_size: int, chains_per_batch: int = 1) -> NoiseStream:
    """The stream a run uses: devinterp's for fsdp_size=1 and blocked for sharded runs, unless given."""
    if noise == "blocked" and chains_per_batch > 1:
        raise ValueError(
            f"noise='blocked' with chains_per_batch={chains_per_batch}: batched chains draw their noise from "
            "per-chain generators; use chains_per_batch=1 (serial or sharded chains) for the blocked stream"
        )
    if noise is None:
        return "devinterp" if fsdp_size == 1 else "blocked"
    if noise not in NOISE_STREAMS:
        raise ValueError(f"noise: expected one of {list(NOISE_STREAMS)} or None, got {noise!r}")
    if noise == "devinterp" and fsdp_size > 1:
        raise ValueError(
            f"noise='devinterp' with fsdp_size={fsdp_size}: devinterp's stream draws each parameter's full "
            "noise tensor from one RNG and cannot be split over shards; use noise='blocked' (the default "
            "for fsdp_size > 1)"
        )
    return noise  # type: ignore[return-value]


def stream_seed(*key: int) -> int:
    """A 63-bit generator seed from integer key parts (blake2b: unrelated keys give unrelated seeds)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Piece:
    """Where a tensor sits in its parameter: parameter index j, the parameter's element count, and the
    flat offset of the tensor's first element (0 for a whole parameter; a shard's row offset x row size)."""

    index: int
    numel: int
    lo: int = 0


@dataclass(frozen=True)
class BlockedNoise:
    """One chain's blocked noise: `step` and `init` give a piece's slice of dense N(0, 1) tensors."""

    init_seed: int
    chain: int
    block: int = DEFAULT_BLOCK

    def step(self, step: int, piece: Piece, like: torch.Tensor) -> torch.Tensor:
        """The piece's slice of its parameter's noise at SGLD `step`, shaped like `like`."""
        return self._slice((_STEP, step, piece.index), piece, like)

    def init(self, piece: Piece, like: torch.Tensor) -> torch.Tensor:
        """The piece's slice of its parameter's init_noise tensor."""
        return self._slice((_INIT, 0, piece.index), piece, like)

    def _slice(self, key: tuple[int, int, int], piece: Piece, like: torch.Tensor) -> torch.Tensor:
        lo, hi, numel = piece.lo, piece.lo + like.numel(), piece.numel
        if not 0 <= lo <= hi <= numel:
            raise ValueError(f"noise slice [{lo}, {hi}) is outside a tensor of {numel} elements")
        parts = []
        for b in range(lo // self.block, -(-hi // self.block)):
            start = b * self.block
            size = min(self.block, numel - start)
            gen = torch.Generator(device=like.device).manual_seed(
                stream_seed(self.init_seed, self.chain, *key, b)
            )
            values = torch.randn(size, generator=gen, device=like.device, dtype=like.dtype)
            parts.append(values[max(lo - start, 0) : min(hi - start, size)])
        flat = torch.cat(parts) if parts else like.new_empty(0)
        return flat.view(like.shape)
