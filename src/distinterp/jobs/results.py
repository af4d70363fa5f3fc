"""The one way a job writes an analysis result (LLC, BIF, susceptibilities, sweep tables): zarr, or netCDF
for a .nc path; used by the CLI and the runners alike."""

from __future__ import annotations

from typing import Any


def write_result(result: Any, path: str) -> None:
    """Write a result Dataset/DataTree as zarr (or netCDF for .nc); fixed-width strings become
    variable-length ones (zarr v3 has no spec for the former)."""
    import xarray as xr

    if path.endswith(".nc"):
        result.to_netcdf(path)
        return

    def variable_strings(ds: Any) -> Any:
        fixed = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind == "U"}
        return ds.assign_coords({k: v for k, v in fixed.items() if k in ds.coords}).assign(
            {k: v for k, v in fixed.items() if k not in ds.coords}
        )

    out = (
        result.map_over_datasets(variable_strings)
        if isinstance(result, xr.DataTree)
        else variable_strings(result)
    )
    out.to_zarr(path, mode="w", consolidated=False)
