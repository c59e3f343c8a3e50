"""IBSI-2 convolutional filters (reference manual arXiv:2006.05470), numpy or dask, chunk-parallel.

Every filter is a pure function ``f(volume, *, ..., boundary=..., dtype=...)`` of a 3-D
``volume[axis0, axis1, axis2]`` (``[z, y, x]``). numpy input gives numpy output; dask input gives a lazy
dask array computed chunk-parallel with ``map_overlap`` (overlap depth = kernel radius, the IBSI boundary
condition mapped to dask's ``boundary``), equal to the numpy result.

Boundary conditions use IBSI-2 names: ``zero`` (scipy ``constant``), ``nearest``, ``periodic`` (scipy
``wrap``) and ``mirror`` (scipy ``reflect`` = numpy ``symmetric``: the edge voxel is repeated).
"2D" filters act in-plane on every slice (axes 1 and 2).
"""

from imaging.filters.gabor import gabor_filter, gabor_kernel
from imaging.filters.laws import laws_filter, laws_kernel
from imaging.filters.log import laplacian_of_gaussian
from imaging.filters.mean import mean_filter
from imaging.filters.wavelets import wavelet_filter, wavelet_kernels

__all__ = [
    "gabor_filter",
    "gabor_kernel",
    "laplacian_of_gaussian",
    "laws_filter",
    "laws_kernel",
    "mean_filter",
    "wavelet_filter",
    "wavelet_kernels",
]
