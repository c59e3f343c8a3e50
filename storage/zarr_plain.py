"""A numpy array as a Zarr v3 group + array, written straight to files: the bytes ``zarr`` writes.

``zarr`` 3 runs every store operation as a coroutine on its event-loop thread: creating a group
and an array and setting their data costs about 7 ms of CPU per array before any compression,
and the collection writes two arrays per series (volume and mask): about a tenth of a cohort's
ingest. For the layout :func:`storage.volumes.write_array` uses (one group with attributes, one
array with a regular chunk grid, default chunk keys, ``bytes`` + ``blosc`` codecs, fill value
zero, no shards) this module writes the same files itself, synchronously:

- ``zarr.json`` of the group and of the array, as zarr serialises them (JSON, indent 2);
- one file per chunk at ``c/<i>/<j>/...`` holding the chunk (edge chunks padded with the fill
  value to the full chunk shape) as little-endian bytes compressed by numcodecs' Blosc with the
  codec's settings (``typesize`` = item size), which is what zarr's ``BloscCodec`` calls;
- no file for a chunk whose every bit is zero (zarr's default ``write_empty_chunks=False``:
  such a chunk equals the fill value, bit for bit for floats).

Anything else (other fill values, shards, non-finite attribute values, big-endian dtypes) is
left to zarr (:func:`plain_layout` says False). ``tests/test_zarr_plain.py`` checks the files
byte for byte against zarr's on every dtype and layout the pipeline writes.

Specification: Zarr v3 core (``zarr.json`` metadata, regular chunk grid, default chunk key
encoding), codecs ``bytes`` and ``blosc``.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec

__all__ = ["plain_layout", "write_plain"]

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, allow_nan=False).encode()


def _fill_json(dtype: np.dtype) -> Any:
    return False if dtype == np.bool_ else (0.0 if dtype.kind == "f" else 0)


def plain_layout(dtype: np.dtype, *, shards: tuple[int, ...] | None, fill: Any, codec: Any,
                 attributes: dict[str, Any]) -> bool:
    """True when :func:`write_plain` writes exactly what zarr would for these settings."""
    dtype = np.dtype(dtype)
    if shards is not None or dtype.kind not in "biuf" or dtype.byteorder == ">":
        return False
    if fill != 0:  # (False for masks)
        return False
    if not isinstance(codec, BloscCodec) or codec.blocksize != 0:
        return False
    try:
        _json_bytes(attributes)
    except (TypeError, ValueError):  # non-finite floats or objects: zarr's encoder decides
        return False
    return True


def write_plain(store: pathlib.Path, name: str, array: np.ndarray, *, chunks: tuple[int, ...],
                dims: tuple[str, ...], codec: Any, attributes: dict[str, Any]) -> None:
    """Write group ``store`` with ``attributes`` and array ``name`` holding ``array`` (see the module docstring).

    Parameters
    ----------
    store : path
        The group folder to create (must not exist).
    name : str
        The array's name inside the group.
    array : ndarray
        Any shape; little-endian or native byte order.
    chunks : tuple of int
        Chunk shape, one entry per axis.
    dims : tuple of str
        Dimension names.
    codec : zarr.codecs.BloscCodec
        Its ``cname``, ``clevel`` and ``shuffle``; ``typesize`` is the item size.
    attributes : dict
        JSON-compatible group attributes.
    """
    from numcodecs import Blosc

    dtype = np.dtype(array.dtype)
    if len(chunks) != array.ndim or len(dims) != array.ndim:
        raise ValueError(f"chunks {chunks} and dims {dims} must have one entry per axis of shape {array.shape}")
    cname = getattr(codec.cname, "value", codec.cname)
    shuffle = getattr(codec.shuffle, "value", codec.shuffle)
    blosc_config = {"typesize": dtype.itemsize, "cname": cname, "clevel": int(codec.clevel),
                    "shuffle": shuffle, "blocksize": 0}
    blosc = Blosc.from_config({**blosc_config, "shuffle": _SHUFFLE[shuffle]})
    store.mkdir(parents=True)
    (store / "zarr.json").write_bytes(_json_bytes({"attributes": attributes, "zarr_format": 3, "node_type": "group"}))
    folder = store / name
    folder.mkdir()
    meta = {
        "shape": list(array.shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _fill_json(dtype),
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}} if dtype.itemsize > 1
                   else {"name": "bytes"},
                   {"name": "blosc", "configuration": blosc_config}],
        "attributes": {},
        "dimension_names": list(dims),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    (folder / "zarr.json").write_bytes(_json_bytes(meta))
    little = dtype.newbyteorder("<")
    grid = [range(-(-s // c)) for s, c in zip(array.shape, chunks, strict=True)]
    for index in itertools.product(*grid):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, array.shape, strict=True))
        block = array[region]
        if block.shape != tuple(chunks):  # an edge chunk: padded with the fill value (zero) to the full chunk
            full = np.zeros(chunks, dtype=little)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        raw = np.ascontiguousarray(block, dtype=little).reshape(-1).view(np.uint8)
        if not raw.any():
            continue  # equal to the fill value bit for bit: zarr writes no file
        path = folder.joinpath("c", *map(str, index))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blosc.encode(raw))
