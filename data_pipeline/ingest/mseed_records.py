"""miniSEED 2 records: walk a file record by record and check what the records say.

libmseed (inside obspy) reads whatever it can: a final record cut short is dropped without a
word when a file mixes record lengths, an unparsable stretch is skipped with a warning, a record
whose sample-rate field was damaged becomes a trace of its own at a rate the channel never had,
and a record whose time was damaged lands on top of other samples or far from its neighbours.
Here the file's own structure (SEED manual v2.4, ch. 8) is walked and checked:

* every record is whole (its length from blockette 1000, a control header's blockette 010, or
  the distance to the next header) — :func:`mseed_records`;
* one channel keeps one sampling rate inside a file, and records of a channel that share time
  with earlier records hold the same samples there (duplicates, which archives do contain, are
  merged; other overlaps are refused). Records out of time order but on no other record's time
  are kept (libmseed's own test data mixes the order) and noted — :func:`check_record_times`.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ReaderError

MSEED3 = b"MS\x03"
MSEED3_REFUSAL = (
    "is miniSEED 3 (it starts with 'MS' and format version 3), which this reader does not "
    "support. Fix: convert it to miniSEED 2 (e.g. with EarthScope's mseedconvert, or by "
    "reading it with pymseed and writing format version 2) and ingest that."
)
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class Record:
    """One data record as its header describes it (times in ns since 1970, UTC)."""

    number: int  # 1-based among the file's data records
    offset: int  # byte offset in the file
    length: int  # bytes
    sid: str  # NET.STA.LOC.CHA
    start_ns: int  # first sample: BTIME + blockette 1001 µs + an unapplied time correction
    rate: float  # samples per second (blockette 100 when present), 0 for none
    nsamples: int

    @property
    def step_ns(self) -> int:
        return round(1e9 / self.rate) if self.rate > 0 else 0

    @property
    def last_ns(self) -> int:
        return self.start_ns + (self.nsamples - 1) * self.step_ns

    def describe(self) -> str:
        when = np.datetime_as_string(np.datetime64(self.start_ns, "ns"), unit="ms")
        return f"record {self.number} (byte {self.offset}, starting {when}Z)"


def _is_data_header(data: bytes, off: int) -> bool:
    """A plausible miniSEED 2 fixed data header at ``off`` (libmseed's MS2_ISVALIDHEADER):
    sequence number of digits/spaces, quality D/R/Q/M, a space, and a valid start time."""
    if off + 48 > len(data):
        return False
    if not all(c in b"0123456789 \x00" for c in data[off : off + 6]):
        return False
    if data[off + 6 : off + 7] not in (b"D", b"R", b"Q", b"M") or data[off + 7] not in b" \x00":
        return False
    for order in "><":
        year, day = struct.unpack_from(f"{order}HH", data, off + 20)
        hour, minute, second = data[off + 24], data[off + 25], data[off + 26]
        if 1900 <= year <= 2100 and 1 <= day <= 366 and hour < 24 and minute < 60 and second < 61:
            return True
    return False


def _detected_length(data: bytes, off: int, path: Path) -> int:
    """Length of a data record without blockette 1000, as libmseed finds it: the distance to
    the next record header, searched at 64-byte steps; the last record runs to the end of the
    file. Either way a record length is a power of two from 128 B (SEED manual v2.4 ch. 8)."""
    size = len(data)
    k = off + 64
    while k + 48 <= size and not _is_data_header(data, k):
        k += 64
    length = (k if k + 48 <= size else size) - off
    if length < 128 or length & (length - 1):
        raise ReaderError(
            path,
            f"data record at byte {off} has no blockette 1000 and no record header follows it "
            f"at a power-of-two distance ({length} B): the file is damaged or truncated. Fix: "
            "re-download it.",
        )
    return length


def _blockettes(
    data: bytes, off: int, order: str, path: Path
) -> tuple[int | None, int, float | None]:
    """(record length from blockette 1000 or None, µs from blockette 1001, rate from 100)."""
    (b,) = struct.unpack_from(f"{order}H", data, off + 46)  # first blockette, from record start
    seen: set[int] = set()
    length, usec, rate = None, 0, None
    while b and b not in seen and off + b + 8 <= len(data):
        seen.add(b)
        btype, nxt = struct.unpack_from(f"{order}HH", data, off + b)
        if btype == 1000:
            exponent = data[off + b + 6]
            if not 7 <= exponent <= 20:
                raise ReaderError(path, f"record at byte {off}: record length 2**{exponent}")
            length = 1 << exponent
        elif btype == 1001:  # microseconds beyond BTIME's 0.0001 s
            usec = struct.unpack_from("b", data, off + b + 5)[0]
        elif btype == 100:  # the actual sample rate, which libmseed uses over the nominal one
            rate = struct.unpack_from(f"{order}f", data, off + b + 4)[0]
        b = nxt
    return length, usec, rate


def _b1000_length(data: bytes, off: int, order: str, path: Path) -> int | None:
    return _blockettes(data, off, order, path)[0]


def _control_length(data: bytes, off: int, path: Path) -> int:
    """Logical record length of a full-SEED volume: blockette 010's exponent, else (a volume
    cut from a larger one) the length of its first data record, found on a 256 B boundary."""
    if data[off + 8 : off + 11] == b"010":  # ASCII "010", length(4), version(4), exponent(2)
        return 1 << int(data[off + 19 : off + 21])
    for k in range(off + 256, len(data) - 48, 256):
        if data[k + 6 : k + 7] in (b"D", b"R", b"Q", b"M") and data[k : k + 6].isdigit():
            order = ">" if 1900 <= struct.unpack_from(">H", data, k + 20)[0] <= 2100 else "<"
            length = _b1000_length(data, k, order, path)
            if length is not None:
                return length
    raise ReaderError(path, f"control record at byte {off}: no record length (no blockette 010)")


def _nominal_rate(factor: int, multiplier: int) -> float:
    """Samples per second from the header's factor and multiplier (libmseed ms_nomsamprate)."""
    rate = float(factor) if factor > 0 else (-1.0 / factor if factor < 0 else 0.0)
    if multiplier > 0:
        rate *= multiplier
    elif multiplier < 0:
        rate = -rate / multiplier
    return rate


def _start_ns(data: bytes, off: int, order: str, usec: int, path: Path, number: int) -> int:
    year, day, hour, minute, second, tenth_ms = struct.unpack_from(
        f"{order}HHBBBxH", data, off + 20
    )
    (flags,) = struct.unpack_from("B", data, off + 36)
    (correction,) = struct.unpack_from(f"{order}i", data, off + 40)  # 0.0001 s
    if not (1 <= day <= 366 and hour < 24 and minute < 60 and second < 61):
        raise ReaderError(
            path,
            f"record {number} (byte {off}) has an invalid start time (day {day}, "
            f"{hour:02d}:{minute:02d}:{second:02d}): its header is damaged. Fix: re-download it.",
        )
    days = (dt.date(year, 1, 1) - _EPOCH).days + day - 1
    ns = (((days * 24 + hour) * 60 + minute) * 60 + second) * 10**9 + tenth_ms * 100_000
    if correction and not flags & 0x02:  # activity flag bit 1: correction already applied
        ns += correction * 100_000
    return ns + usec * 1000


def mseed_records(path: Path, data: bytes | None = None) -> list[Record]:
    """Walk a miniSEED 2 / full-SEED file record by record (SEED manual v2.4 ch. 8) and return
    its data records. A record that runs past the end of the file (truncation) or a header that
    is not a record header (damage) is a ReaderError."""
    data = path.read_bytes() if data is None else data
    size, off, control_length, out = len(data), 0, None, []
    if data[:3] == MSEED3:
        raise ReaderError(path, MSEED3_REFUSAL)
    while off < size:
        if size - off < 48:
            raise ReaderError(path, f"the last {size - off} B are a partial record: truncated")
        kind = data[off + 6 : off + 7]
        if kind in (b"V", b"A", b"S", b"T"):  # full-SEED control header
            if control_length is None:
                control_length = _control_length(data, off, path)
            length = control_length
        elif kind in (b"D", b"R", b"Q", b"M"):
            # Byte order from the start year (bytes 20-21), as libmseed does.
            order = ">" if 1900 <= struct.unpack_from(">H", data, off + 20)[0] <= 2100 else "<"
            nsamples, factor, multiplier = struct.unpack_from(f"{order}Hhh", data, off + 30)
            b1000, usec, b100 = _blockettes(data, off, order, path)
            length = b1000 or control_length
            if length is None:  # no blockette 1000 (SEED 2.3 and older writers)
                length = _detected_length(data, off, path)
            h = data[off + 8 : off + 20].decode("ascii", "replace")
            sid = ".".join(s.strip() for s in (h[10:12], h[0:5], h[5:7], h[7:10]))
            number = len(out) + 1
            out.append(Record(number, off, length, sid, _start_ns(data, off, order, usec, path,
                              number), float(b100) if b100 else _nominal_rate(factor, multiplier),
                              nsamples))  # fmt: skip
        else:
            raise ReaderError(
                path,
                f"byte {off} does not start a miniSEED record (quality code {kind!r}): the file "
                "is damaged. Fix: re-download it.",
            )
        if off + length > size:
            raise ReaderError(
                path,
                f"the record at byte {off} is {length} B long but the file ends {size - off} B "
                "after its start: the file is truncated. Fix: re-download it.",
            )
        off += length
    return out


def _rate_text(rate: float) -> str:
    return f"{rate:.6g} Hz" + (f" (one sample per {1 / rate:.6g} s)" if 0 < rate < 1 else "")


def _samples(data: bytes, rec: Record) -> np.ndarray | None:
    """The record's samples, decoded by obspy/libmseed on its own (None if it cannot be)."""
    import obspy

    try:
        st = obspy.read(io.BytesIO(data[rec.offset : rec.offset + rec.length]), format="MSEED")
    except Exception:
        return None
    return np.concatenate([np.asarray(tr.data) for tr in st]) if len(st) else None


def _same_samples(data: bytes, a: Record, b: Record) -> tuple[bool, int, int]:
    """Whether ``a`` and ``b`` hold the same values at the times they share: (same, differing,
    shared). A record repeated byte for byte past its sequence number is the same at once."""
    if (
        a.length == b.length
        and data[a.offset + 8 : a.offset + a.length] == data[b.offset + 8 : b.offset + b.length]
    ):
        return True, 0, min(a.nsamples, b.nsamples)
    sa, sb = _samples(data, a), _samples(data, b)
    if sa is None or sb is None:
        return False, -1, 0
    shift = round((b.start_ns - a.start_ns) / a.step_ns)  # b's first sample in a's index
    lo, hi = max(0, shift), min(len(sa), len(sb) + shift)
    if hi <= lo:
        return True, 0, 0
    x, y = sa[lo:hi], sb[lo - shift : hi - shift]
    differ = int(np.count_nonzero((x != y) & ~(np.isnan(x) & np.isnan(y))))  # float encodings
    return differ == 0, differ, hi - lo


def check_record_times(path: Path, records: list[Record], data: bytes) -> list[str]:
    """Refuse a channel whose records change sampling rate or hold different samples for one
    time; return notes on duplicate records (merged) and records out of time order (kept)."""
    channels: dict[str, list[Record]] = {}
    for r in records:
        if r.nsamples > 0:
            channels.setdefault(r.sid, []).append(r)
    notes: list[str] = []
    for sid, recs in channels.items():
        rates = Counter(r.step_ns for r in recs)
        if len(rates) > 1:
            usual, n_usual = rates.most_common(1)[0]
            odd = next(r for r in recs if r.step_ns != usual)
            rate = next(r.rate for r in recs if r.step_ns == usual)
            raise ReaderError(
                path,
                f"{sid}: {odd.describe()} declares {_rate_text(odd.rate)}, but {n_usual} of the "
                f"channel's {len(recs)} records declare {_rate_text(rate)}. A channel keeps one "
                "sampling rate, so this record's header is damaged (or the channel was "
                "reconfigured inside the file). Fix: re-download the file; if the rate really "
                "changed, split the file at that time and ingest the parts.",
            )
        step = recs[0].step_ns
        if step == 0:  # no sample rate (log text): no time axis to check
            continue
        tol = step // 2  # libmseed joins records whose times differ by up to half a sample
        starts = np.array([r.start_ns for r in recs], dtype=np.int64)
        lasts = np.array([r.last_ns for r in recs], dtype=np.int64)
        reached = np.maximum.accumulate(lasts)  # the latest sample of the records so far
        repeats: list[tuple[Record, Record]] = []
        unordered: list[Record] = []
        for i in np.flatnonzero(starts[1:] < reached[:-1] + step - tol) + 1:
            r = recs[i]
            shared = np.flatnonzero(
                (starts[:i] <= r.last_ns + tol) & (lasts[:i] >= r.start_ns - tol)
            )
            if not len(shared):
                unordered.append(r)
                continue
            for j in shared:
                same, differ, n = _same_samples(data, r, recs[j])
                if not same:
                    what = (f"{differ} of their {n} shared samples differ" if differ >= 0
                            else "they cannot be decoded to compare")  # fmt: skip
                    raise ReaderError(
                        path,
                        f"{sid}: {r.describe()} lies on the time of {recs[j].describe()} and "
                        f"{what}: the file holds two versions of that time, or one record's time "
                        "header is damaged. Fix: re-download the file; if the archive really "
                        "holds both versions, keep one (e.g. dataselect -Ps, or obspy's "
                        "Stream.merge(method=1)) and ingest the result.",
                    )
            repeats.append((r, recs[shared[0]]))
        if repeats:
            r, q = repeats[0]
            notes.append(
                f"{sid}: {len(repeats)} record(s) repeat samples already in the file at the same "
                f"times (first: record {r.number}, on the time of record {q.number}); each "
                "sample is kept once"
            )
        if unordered:
            notes.append(
                f"{sid}: {len(unordered)} record(s) lie out of time order in the file (first: "
                f"{unordered[0].describe()}); each is placed by its header time"
            )
    return notes


__all__ = ["MSEED3", "MSEED3_REFUSAL", "Record", "check_record_times", "mseed_records"]
