"""What a file really is, from its first bytes: checked before a reader parses it.

A netCDF handed to a text-table reader used to be parsed as text ("line 14 has 3 cells"); a
GRIB file given to the netCDF reader failed inside a backend. :func:`sniff` names the format from
its signature, and :func:`check_signature` refuses a file whose signature belongs to another
format than the source's, naming both and the fix. Signatures:

* netCDF classic ``CDF\\x01``, 64-bit offset ``CDF\\x02``, CDF-5 ``CDF\\x05`` (netCDF User Guide,
  "File format specifications");
* HDF5 (netCDF-4) ``\\x89HDF\\r\\n\\x1a\\n`` at byte 0, 512, 1024, 2048, ... (a user block shifts
  it; HDF5 File Format Specification §II.A);
* HDF4 ``\\x0e\\x03\\x13\\x01`` (HDF4 "magic number", hdf.h ``HDFMAGIC``);
* GRIB ``GRIB`` with edition 1 or 2 in byte 8 (WMO Manual on Codes, FM 92 section 0);
* TIFF ``II*\\0`` / ``MM\\0*`` (BigTIFF ``II+\\0``);
* miniSEED 2 / full SEED: a 6-character sequence number (digits, spaces or NULs), a data-quality
  indicator ``D``/``R``/``Q``/``M`` (or a control header type ``V``/``A``/``S``/``T``) and a
  space, NUL or continuation ``*`` (SEED manual v2.4 ch. 8, fixed header); miniSEED 3
  ``MS\\x03``;
* SAC: header version ``NVHDR`` = 6 (or 7) at word 76 (byte 304), either byte order;
* SEG-Y: a 3200-byte textual header whose first card starts with ``C`` in EBCDIC (``0xC3``) or
  ASCII, and a data sample format code 1–16 at bytes 3225–3226 (SEG-Y rev 2.0, §3–4).

Text formats (GHCN ``.dly``, CAMELS, FLUXNET tables) have no signature: a file with one of the
binary signatures above is refused by them.
"""

from __future__ import annotations

import struct
from pathlib import Path

from .errors import ReaderError

# Which sniffed kinds each source format accepts. A file whose kind is not listed but is one of
# the known kinds is refused; an unrecognised file is left to the reader's own checks.
ACCEPTS: dict[str, frozenset[str]] = {
    "netcdf": frozenset({"netcdf3", "hdf5"}),
    "grib": frozenset({"grib"}),
    "geotiff": frozenset({"tiff"}),
    "modis_hdf4": frozenset({"hdf4"}),
    "hdf5_grid": frozenset({"hdf5"}),
    "mseed": frozenset({"mseed", "sac"}),
    "sac": frozenset({"mseed", "sac"}),
    "segy": frozenset({"segy"}),
    "seisbench": frozenset({"hdf5"}),
    "ghcn": frozenset(),
    "camels": frozenset(),
    "fluxnet": frozenset(),
}
# The source format that reads each kind (for the fix in the message).
_READ_WITH = {
    "netcdf3": ("a netCDF-3 (classic/64-bit offset/CDF-5)", "netcdf"),
    "hdf5": ("an HDF5 (netCDF-4 or plain HDF5)", "netcdf (netCDF-4) or hdf5_grid"),
    "hdf4": ("an HDF4", "modis_hdf4"),
    "grib": ("a GRIB", "grib"),
    "tiff": ("a TIFF/GeoTIFF", "geotiff"),
    "mseed": ("a miniSEED", "mseed"),
    "sac": ("a SAC", "sac"),
    "segy": ("a SEG-Y", "segy"),
}
_HDF5 = b"\x89HDF\r\n\x1a\n"


def _is_mseed2(head: bytes) -> bool:
    if len(head) < 48:
        return False
    seq_ok = all(c in b"0123456789 \x00" for c in head[:6])
    # D/R/Q/M: data records; V/A/S/T: control headers of a full SEED volume (obspy reads both)
    return (
        seq_ok
        and head[6:7] in tuple(b"DRQMVAST"[i : i + 1] for i in range(8))
        and head[7:8] in (b" ", b"\x00", b"*")
    )


def _is_sac(head: bytes, size: int) -> bool:
    if len(head) < 632:
        return False
    for order in "<>":
        (nvhdr,) = struct.unpack_from(f"{order}i", head, 304)
        (npts,) = struct.unpack_from(f"{order}i", head, 316)
        if nvhdr in (6, 7) and npts >= 0 and size >= 632 + 4 * npts:
            return True
    return False


def _is_segy(head: bytes) -> bool:
    if len(head) < 3600:
        return False
    first = head[0]
    if first not in (0xC3, ord("C")):
        return False
    return any(1 <= struct.unpack_from(f"{o}h", head, 3224)[0] <= 16 for o in "<>")


def sniff(path: str | Path) -> str | None:
    """The kind of file from its signature (see the module docstring), or None if unknown."""
    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(4096)
        if head[:4] in (b"CDF\x01", b"CDF\x02", b"CDF\x05"):
            return "netcdf3"
        if head[:4] == b"\x0e\x03\x13\x01":
            return "hdf4"
        if head[:4] == b"GRIB" and len(head) > 8 and head[7] in (1, 2):
            return "grib"
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return "tiff"
        offset = 0
        while offset < size:  # HDF5 superblock at 0, 512, 1024, 2048, ...
            fh.seek(offset)
            if fh.read(8) == _HDF5:
                return "hdf5"
            offset = 512 if offset == 0 else offset * 2
    if head[:3] == b"MS\x03" or _is_mseed2(head):
        return "mseed"
    if _is_segy(head):
        return "segy"
    if _is_sac(head, size):
        return "sac"
    return None


def check_signature(fmt: str, path: str | Path) -> str | None:
    """Refuse ``path`` if its signature says it is another known format than ``fmt`` reads.

    Returns the sniffed kind (None if unrecognised)."""
    accepted = ACCEPTS.get(fmt)
    kind = sniff(path)
    if accepted is None or kind is None or kind in accepted:
        return kind
    what, reader = _READ_WITH[kind]
    raise ReaderError(
        path,
        f"is {what} file (its first bytes say so), not input for the {fmt!r} reader. Fix: "
        f"put it in a source with format: {reader}, or remove it from this source's path.",
    )
