"""IBSI-2 convolutional filters (reference manual arXiv:2006.05470), numpy or dask, chunk-parallel."""

from imaging.filters.log import laplacian_of_gaussian
from imaging.filters.mean import mean_filter

__all__ = ["laplacian_of_gaussian", "mean_filter"]
