"""Where each fuzzed sample's bytes are (benchmarks/fuzz_ingest.py): payload ranges with the
number of values a flipped byte may change, record/message headers, and the length fields a
'huge-length' mutant overwrites — one reader of each format's own layout, independent of SciGPT's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np


@dataclass
class Layout:
    """Where a sample's bytes are: payload ranges with their footprint, and length fields."""

    payload: list[tuple[int, int, int]]  # (start, end, values a flipped byte may change)
    lengths: list[tuple[int, bytes, str]]  # (offset, huge bytes to write, label)
    total_values: int  # the footprint of any other byte (file-level metadata)
    headers: tuple[tuple[int, int, int], ...] = ()  # per-record/message headers, as payload


# ---- layouts --------------------------------------------------------------------------------
def _layout_netcdf(path: Path, data: bytes) -> Layout:
    with h5py.File(path, "r") as f:
        ds = f["u10"]
        start, size = ds.id.get_offset(), ds.id.get_storage_size()
        n = ds.size
    version = data[8]
    eof = 40 if version in (0, 1) else 28  # superblock v0/1 vs v2/3 end-of-file address
    return Layout(
        payload=[(start, start + size, 1)],  # contiguous int16: a byte is half of one value
        lengths=[
            (eof, b"\x7f" + b"\xff" * 7, "superblock end-of-file address"),
            (13, b"\xff", "superblock size of lengths"),
        ],
        total_values=n,
    )


def _grib1_messages(data: bytes):
    off = 0
    while True:
        off = data.find(b"GRIB", off)
        if off < 0:
            return
        total = int.from_bytes(data[off + 4 : off + 7], "big")
        s1 = off + 8
        l1 = int.from_bytes(data[s1 : s1 + 3], "big")
        flags = data[s1 + 7]
        p = s1 + l1
        if flags & 0x80:  # GDS
            p += int.from_bytes(data[p : p + 3], "big")
        if flags & 0x40:  # BMS
            p += int.from_bytes(data[p : p + 3], "big")
        bds, lbds = p, int.from_bytes(data[p : p + 3], "big")
        bits = data[bds + 10]
        nvals = ((lbds - 11) * 8 - (data[bds + 3] & 0x0F)) // max(bits, 1)
        yield off, total, s1, bds, lbds, bits, nvals
        off += total


def _layout_grib(path: Path, data: bytes) -> Layout:
    payload, lengths, headers, total = [], [], [], 0
    for k, (off, _total, _s1, bds, lbds, bits, nvals) in enumerate(_grib1_messages(data)):
        total += nvals
        per_byte = -(-8 // bits) + 1 if bits else 1  # values a byte's bits may touch
        payload.append((bds + 11, bds + lbds, per_byte))
        headers.append((off, bds + 11, nvals))  # a message's header: its values
        if k in (0, 37):
            lengths += [(off + 4, b"\xff\xff\xff", f"message {k} total length"),
                        (bds, b"\xff\xff\xff", f"message {k} data section length")]  # fmt: skip
    return Layout(payload=payload, lengths=lengths, total_values=total, headers=tuple(headers))


def _hdf4_dds(data: bytes):
    off = 4
    while off:
        ndds, nxt = struct.unpack(">HI", data[off : off + 6])
        for i in range(ndds):
            p = off + 6 + 12 * i
            yield (p, *struct.unpack(">HHII", data[p : p + 12]))
        off = nxt


def _layout_modis(path: Path, data: bytes) -> Layout:
    from pyhdf.SD import SD, SDC

    sd = SD(str(path), SDC.READ)
    sizes = [int(np.prod(shape)) for _, (_, shape, _, _) in sd.datasets().items()]
    sd.end()
    layer = max(sizes)
    payload, lengths = [], []
    for p, tag, _ref, off, length in _hdf4_dds(data):
        if tag == 40 and length < 2**31:  # DFTAG_COMPRESSED: one deflated layer
            payload.append((off, off + length, layer))
        if tag == 30:  # DFTAG_VERSION: read into a 92-byte stack buffer by the HDF4 library
            lengths.append((p + 8, struct.pack(">I", 4000), "version record length"))
    big = max((d for d in _hdf4_dds(data) if d[1] == 40), key=lambda d: d[4])
    lengths += [(big[0] + 8, b"\x7f\xff\xff\xff", "compressed layer length"),
                (4, b"\xff\xff", "DD block entry count")]  # fmt: skip
    return Layout(payload=payload, lengths=lengths, total_values=sum(sizes))


def _layout_mseed(path: Path, data: bytes) -> Layout:
    payload, headers, total = [], [], 0
    rec = 512
    for r in range(0, len(data), rec):
        nsamp = int.from_bytes(data[r + 30 : r + 32], "big")
        begin = int.from_bytes(data[r + 44 : r + 46], "big")
        total += nsamp
        # Steim frames: a flipped bit changes the differences of the rest of the record.
        payload.append((r + begin, r + rec, nsamp))
        # a record header (time, rate, counts): the record's samples, where they were and
        # where they land
        headers.append((r, r + begin, 2 * nsamp))
    b1000 = int.from_bytes(data[46:48], "big")
    return Layout(
        payload=payload,
        lengths=[
            (30, b"\xff\xff", "record 0 number of samples"),
            (b1000 + 6, b"\x1f", "blockette 1000 record length exponent"),
            (44, b"\xff\xff", "record 0 beginning of data"),
        ],
        total_values=total,
        headers=tuple(headers),
    )


def _layout_segy(path: Path, data: bytes) -> Layout:
    ns = int.from_bytes(data[3220:3222], "big")
    fmt = int.from_bytes(data[3224:3226], "big")
    width = {1: 4, 2: 4, 3: 2, 5: 4, 8: 1}[fmt]
    tlen = 240 + ns * width
    ntr = (len(data) - 3600) // tlen
    payload = [(3600 + k * tlen + 240, 3600 + (k + 1) * tlen, 1) for k in range(ntr)]
    headers = tuple((3600 + k * tlen, 3600 + k * tlen + 240, ns) for k in range(ntr))
    return Layout(
        payload=payload,
        lengths=[
            (3220, b"\xff\xff", "binary header samples per trace"),
            (3600 + 114, b"\xff\xff", "trace 0 samples per trace"),
            (3504, b"\x7f\xff", "extended textual header count"),
        ],
        total_values=ntr * ns,
        headers=headers,
    )


LAYOUTS = {"netcdf": _layout_netcdf, "grib": _layout_grib, "modis": _layout_modis,
           "mseed": _layout_mseed, "segy": _layout_segy}  # fmt: skip


# ---- mutants --------------------------------------------------------------------------------
