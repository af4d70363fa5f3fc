"""Reading a sampling store's observables as every analysis does (BIF, susceptibilities): which keys, how
many rows, which chains are usable, one chunk (chain, draws) at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from distinterp.analyses.chains import usable_chains
from distinterp.errors import AnalysisInputError
from distinterp.store import STEPS_DONE


@dataclass(frozen=True)
class ObservableLosses:
    """The observables of a sampling store as analyses read them: which, how many rows, which chains."""

    ds: xr.Dataset
    keys: list[str]
    sizes: list[int]  # rows per key
    context_length: int
    chains: list[int]
    num_draws: int
    draw_chunk: int

    @classmethod
    def open(
        cls,
        samples: xr.DataTree | xr.Dataset,
        keys: Sequence[str] | None = None,
        *,
        allow_partial: bool = False,
        what: str = "analysis",
        field: str = "loss_keys",
    ) -> ObservableLosses:
        """Check the schema of the named observables (all, sorted, when None) and pick usable chains."""
        ds = samples.dataset if isinstance(samples, xr.DataTree) else samples
        if not isinstance(ds, xr.Dataset):
            raise AnalysisInputError(
                f"{what}: samples must be the DataTree sample() returns, got {type(samples)}"
            )
        available = available_observables(ds)
        if keys is None:
            keys = sorted(available)
        missing = [k for k in keys if k not in available]
        if missing:
            raise AnalysisInputError(
                f"{what}: {field}: {missing} not in the store; available observables: {sorted(available)}"
            )
        if not keys:
            raise AnalysisInputError(f"{what}: {field}: no observables (loss_*) in the store")
        sizes: list[int] = []
        context = 0
        for key in keys:
            loss, ids = f"loss_{key}", f"input_ids_{key}"
            expected = ("chain", "draw", f"batch_{key}", "token_pos")
            if ds[loss].dims != expected:
                raise AnalysisInputError(
                    f"{what}: store field {loss} has dims {ds[loss].dims}, expected {expected}"
                )
            if ids not in ds or ds[ids].dims != (f"batch_{key}", "token"):
                got = ds[ids].dims if ids in ds else "nothing"
                raise AnalysisInputError(
                    f"{what}: store field {ids} has dims {got}, expected ('batch_{key}', 'token')"
                )
            T = ds.sizes["token_pos"]
            if ds.sizes["token"] != T + 1:
                raise AnalysisInputError(
                    f"{what}: store field {ids} has {ds.sizes['token']} tokens; expected token_pos + 1 = {T + 1}"
                )
            context = T
            sizes.append(int(ds.sizes[f"batch_{key}"]))
        chains = (
            usable_chains(ds, allow_partial=allow_partial, what=what)
            if STEPS_DONE in ds
            else list(range(ds.sizes["chain"]))
        )
        chunks = ds[f"loss_{keys[0]}"].encoding.get("chunks")
        draw_chunk = int(chunks[1]) if chunks else min(50, ds.sizes["draw"])
        return cls(ds, list(keys), sizes, int(context), chains, int(ds.sizes["draw"]), max(1, draw_chunk))

    @property
    def num_rows(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> list[int]:
        """First row of each key in the concatenation (keys in order)."""
        return [int(x) for x in np.cumsum([0, *self.sizes[:-1]])]

    @property
    def excluded_chains(self) -> list[int]:
        return sorted(set(range(self.ds.sizes["chain"])) - set(self.chains))

    def draw_slices(self) -> list[slice]:
        """Draw ranges aligned with the store's chunks: each read touches one chunk per chain."""
        d, c = self.num_draws, self.draw_chunk
        return [slice(i, min(i + c, d)) for i in range(0, d, c)]

    def read(self, key: str, chain: int, draws: slice) -> np.ndarray:
        """loss_<key>[chain, draws] as float32 (draws, rows, token_pos): one chunk of the store."""
        return np.asarray(self.ds[f"loss_{key}"].isel(chain=chain, draw=draws).values, dtype=np.float32)

    def input_ids(self) -> xr.DataArray:
        """input_ids of every key concatenated along `batch` (dims batch, position), as devinterp returns."""
        parts = [np.asarray(self.ds[f"input_ids_{k}"].values) for k in self.keys]
        return xr.DataArray(np.concatenate(parts), dims=("batch", "position"))


def available_observables(ds: xr.Dataset) -> list[str]:
    """Observable ids of a store: the `loss_<id>` variables."""
    return [str(v)[len("loss_") :] for v in ds.data_vars if str(v).startswith("loss_")]
