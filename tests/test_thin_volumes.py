"""Volumes thinner than an operation's overlap (one slice): dask equals numpy instead of failing.

Soak finding (2026-12-03): a damaged series left a one-slice volume; the auto-segmentation's opening
(``map_overlap`` depth 2) made dask raise "overlapping depth 2 is larger than your array 1" and the whole
pipeline run failed.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from imaging import preprocess as P
from imaging import segment as S
from imaging.voxelgrid import block_depth


@pytest.mark.parametrize("shape,chunks", [((1, 40, 40), (1, 16, 16)), ((2, 33, 1), (2, 11, 1)), ((1, 1, 50), (1, 1, 20))])
def test_morphology_on_thin_volumes(shape, chunks):
    rng = np.random.default_rng(0)
    mask = rng.random(shape) > 0.4
    for fn, ref in ((S.binary_opening, ndi.binary_opening), (S.binary_closing, ndi.binary_closing)):
        got = fn(da.from_array(mask, chunks=chunks), iterations=2).compute()
        want = ref(mask, structure=ndi.generate_binary_structure(3, 1), iterations=2)
        np.testing.assert_array_equal(got, want)


def test_filters_on_a_one_slice_volume():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(1, 48, 40)).astype(np.float32)
    lazy = da.from_array(vol, chunks=(1, 16, 16))
    np.testing.assert_allclose(P.gaussian(lazy, spacing=(2.0, 1.0, 1.0), sigma_mm=1.5).compute(),
                               P.gaussian(vol, spacing=(2.0, 1.0, 1.0), sigma_mm=1.5), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(P.median(lazy, size=3).compute(), P.median(vol, size=3))


def test_block_depth():
    assert block_depth((1, 3, 2), (2, 2, 1)) == {0: 0, 1: 2, 2: 1}
    with pytest.raises(ValueError, match="one value per axis"):
        block_depth((1, 2), (1, 1, 1))
