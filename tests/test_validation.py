"""The tensor checks of aggregator_service/validation.py that need no server."""
from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.validation import all_finite


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_every_non_finite_value(dtype: type, bad: float) -> None:
    for size in [1, 2, 7, 16, 17, 65_535, 65_536, 65_537, 200_000]:
        x = np.full(size, np.finfo(dtype).max, dtype=dtype)  # the largest finite values are finite
        assert all_finite(x)
        for pos in {0, min(1, size - 1), size // 2, size - 1, min(size - 1, 65_536)}:
            y = x.copy()
            y[pos] = bad
            assert not all_finite(y), (size, pos)
    assert all_finite(np.zeros(0, dtype=dtype))
    tiny = np.full(33, np.finfo(dtype).smallest_subnormal, dtype=dtype)
    assert all_finite(tiny) and all_finite(-tiny)
