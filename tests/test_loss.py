"""The default per-token loss and its finite check."""

from __future__ import annotations

import pytest
import torch

from distinterp.loss import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_all_finite_finds_every_nan_and_inf(dtype: torch.dtype) -> None:
    x = torch.randn(3, 4, 9).to(dtype)
    assert all_finite(x).item() and all_finite(x).dtype == torch.bool
    for value in (float("nan"), float("inf"), -float("inf")):
        for index in [(0, 0, 0), (2, 3, 8), (1, 2, 4)]:
            y = x.clone()
            y[index] = value
            assert not all_finite(y).item(), (value, index)
            assert all_finite(y).item() == torch.isfinite(y).all().item()
    assert all_finite(torch.empty(0, dtype=dtype)).item()
