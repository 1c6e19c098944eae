"""The idx file format of MNIST and Fashion-MNIST (LeCun's ``*-idx3-ubyte``), gzipped or not.

An idx file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values. MNIST-format data sets use only unsigned
bytes (type 0x08): images ``(N, H, W)`` and labels ``(N,)``. Anything else, a short file or a
broken gzip stream is a :class:`DataError` that names the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from splitc.data.bundle import DataError

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (told by its first bytes, not its name)."""
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is a damaged gzip file ({exc}); fetch it again") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file with ``ndim`` dimensions (3: images, 1: labels)."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number); fetch it again")
    if data[2] != UBYTE or data[3] != ndim:
        raise DataError(f"{path}: expected an idx file of unsigned bytes with {ndim} dimension(s), "
                        f"found type 0x{data[2]:02x} with {data[3]}; is it the right file?")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (its header is incomplete); fetch it again")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    count = int(np.prod(shape))
    if len(data) != header + count:
        raise DataError(f"{path} holds {len(data) - header} values where its header says {count} "
                        f"(shape {shape}); the file is truncated or damaged: fetch it again")
    return np.frombuffer(data, np.uint8, count, header).reshape(shape)


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8) as an idx file, gzipped when ``compress`` (default: the name
    ends in ``.gz``). The tests' fixtures and anyone converting data use it."""
    array = np.ascontiguousarray(array, np.uint8)
    body = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
    if compress if compress is not None else path.name.endswith(".gz"):
        body = gzip.compress(body, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(body)
    tmp.replace(path)
    return path
