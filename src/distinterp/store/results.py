"""The one way an analysis result is written (LLC, BIF, susceptibilities, sweep tables, a grid's token
vectors): zarr, or netCDF for a .nc path; used by the CLI, the runners and the grid analyses alike."""

from __future__ import annotations

from typing import Any

import xarray as xr

from distinterp.store.location import Location


def _variable_strings(ds: Any) -> Any:
    """Fixed-width strings as variable-length ones (zarr v3 has no spec for the former)."""
    fixed = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind == "U"}
    return ds.assign_coords({k: v for k, v in fixed.items() if k in ds.coords}).assign(
        {k: v for k, v in fixed.items() if k not in ds.coords}
    )


def write_result(result: Any, path: str | Location, *, encoding: dict[str, Any] | None = None) -> None:
    """Write a result Dataset/DataTree as zarr (or netCDF for .nc), replacing what was there. A Location
    carries its storage_options to a remote store; `encoding`: per-variable zarr encoding (chunks)."""
    url = path.url if isinstance(path, Location) else str(path)
    if url.endswith(".nc"):
        result.to_netcdf(path.local_path if isinstance(path, Location) else url)
        return
    out = (
        result.map_over_datasets(_variable_strings)
        if isinstance(result, xr.DataTree)
        else _variable_strings(result)
    )
    kwargs: dict[str, Any] = {"mode": "w", "consolidated": False}
    if encoding is not None:
        kwargs["encoding"] = encoding
    if isinstance(path, Location):
        if path.is_local:
            out.to_zarr(str(path.local_path), **kwargs)
        else:
            out.to_zarr(path.url, storage_options=path.fsspec_options(), **kwargs)
        return
    out.to_zarr(url, **kwargs)
