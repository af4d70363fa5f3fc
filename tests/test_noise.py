"""Layout-invariant noise: any split of a parameter draws exactly the slices of the one dense tensor."""

from __future__ import annotations

import pytest
import torch

from distinterp.noise import BlockedNoise, Piece, resolve_noise


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_shards_draw_slices_of_the_same_tensor(shards: int) -> None:
    noise = BlockedNoise(init_seed=100, chain=3, block=7)  # many blocks, straddled by most shards
    rows, cols = 11, 5
    whole = noise.step(4, Piece(2, rows * cols), torch.empty(rows, cols))
    chunk = -(-rows // shards)
    pieces = []
    for r in range(shards):
        lo, hi = min(r * chunk, rows), min((r + 1) * chunk, rows)
        pieces.append(noise.step(4, Piece(2, rows * cols, lo * cols), torch.empty(hi - lo, cols)))
    assert torch.equal(torch.cat(pieces), whole)
    assert whole.std() > 0.5 and abs(float(whole.mean())) < 0.5


def test_keys_give_independent_streams() -> None:
    like = torch.empty(64)
    base = BlockedNoise(100, 0, block=16)
    draws = [
        base.step(0, Piece(0, 64), like),
        base.step(1, Piece(0, 64), like),
        base.step(0, Piece(1, 64), like),
        base.init(Piece(0, 64), like),
        BlockedNoise(100, 1, block=16).step(0, Piece(0, 64), like),
        BlockedNoise(101, 0, block=16).step(0, Piece(0, 64), like),
    ]
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j]), (i, j)
    assert torch.equal(draws[0], base.step(0, Piece(0, 64), like))  # a pure function of its key
    with pytest.raises(ValueError, match="outside a tensor of 64"):
        base.step(0, Piece(0, 64, 60), torch.empty(8))


def test_stream_choice() -> None:
    assert resolve_noise(None, 1) == "devinterp" and resolve_noise(None, 2) == "blocked"
    assert resolve_noise("blocked", 1) == "blocked"
    with pytest.raises(ValueError, match=r"noise='devinterp' with fsdp_size=2.*use noise='blocked'"):
        resolve_noise("devinterp", 2)
    with pytest.raises(ValueError, match="noise: expected one of"):
        resolve_noise("philox", 1)
    with pytest.raises(ValueError, match="noise='blocked' with chains_per_batch=2"):
        resolve_noise("blocked", 1, chains_per_batch=2)
