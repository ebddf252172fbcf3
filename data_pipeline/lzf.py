"""Deterministic LZF chunks for the shard writer (h5py's ``lzf`` filter reads them back).

Why this exists: h5py's bundled liblzf is compiled with ``INIT_HTAB 0`` (h5py ``lzf/lzf/lzfP.h``),
so ``lzf_compress`` keeps its 2**17-entry hash table of *pointers* uninitialised on the C stack.
A stale pointer left there by an earlier call that happens to point into the current input
(within the 8 KiB window, three equal bytes) is accepted as a match: the output is still a valid
stream that decompresses exactly, but *which* matches are taken depends on memory addresses and
stack contents, which differ between runs (heap/mmap placement is randomised and depends on what
ran before, e.g. ecCodes). GRIB sources written with ``lzf`` therefore gave different shard bytes
on every run, while ``gzip`` (zlib initialises its state) and ``none`` did not.

The fix keeps the format (any HDF5 reader with the LZF filter, h5py included, decodes these chunks)
but produces the compressed bytes here, from the data alone: the HDF5 shuffle filter's byte
transposition, then an LZF stream of literal runs and back-references at offset 1 (runs of one
repeated byte: the exponent planes and NaN padding of shuffled float32 patches). The chunk goes in
with ``write_direct_chunk``. A chunk that would not shrink is stored shuffled but not LZF-coded,
with the LZF bit of its filter mask set, as HDF5 itself does when an optional filter fails.

LZF stream format (liblzf ``lzf_d.c``): a control byte ``000LLLLL`` starts a literal run of
``L + 1`` bytes (1..32); ``LLLooooo oooooooo`` (``L`` in 1..6) or ``111ooooo LLLLLLLL oooooooo``
(length byte ``+ 7``) copies ``L + 2`` bytes from ``offset + 1`` bytes back.
"""

from __future__ import annotations

import itertools

import h5py
import numpy as np

_MAX_LITERAL = 32
_MAX_REF = 264  # 7 + 255 + 2 bytes
_MIN_RUN = 4  # one literal byte + a back-reference of >= 3 bytes


def shuffle_bytes(raw: np.ndarray) -> np.ndarray:
    """The HDF5 shuffle filter: byte k of every element together, k = 0..itemsize-1 (uint8)."""
    a = np.ascontiguousarray(raw)
    size = a.dtype.itemsize
    return a.view(np.uint8).reshape(-1, size).T.ravel()


def lzf_encode(data: np.ndarray) -> bytes:
    """Deterministic LZF stream of ``data`` (uint8, 1-D): literals and byte-run references."""
    data = np.ascontiguousarray(data, dtype=np.uint8).ravel()
    n = data.size
    if n == 0:
        return b""
    starts = np.flatnonzero(np.concatenate(([True], data[1:] != data[:-1])))  # (R,)
    lengths = np.diff(np.append(starts, n))
    long_runs = lengths >= _MIN_RUN
    run_start, run_len = starts[long_runs], lengths[long_runs]
    # Each long run: its first byte stays literal, the other run_len - 1 bytes are copies of
    # the byte before them, split into pieces of at most 264 (each >= 3: see below).
    ref_first = run_start + 1
    ref_total = run_len - 1
    pieces = -(-ref_total // _MAX_REF)  # (K,) ceil; a split gives pieces >= 132 bytes
    base, extra = np.divmod(ref_total, pieces)
    owner = np.repeat(np.arange(len(ref_total)), pieces)
    within = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    ref_len = base[owner] + (within < extra[owner])
    ref_src = ref_first[owner] + within * base[owner] + np.minimum(within, extra[owner])
    # Literal spans: everything not covered by references, cut into runs of at most 32.
    lit_lo = np.concatenate(([0], ref_first + ref_total))
    lit_hi = np.append(ref_first, n)
    keep = lit_hi > lit_lo
    lit_lo, lit_hi = lit_lo[keep], lit_hi[keep]
    nlit = -(-(lit_hi - lit_lo) // _MAX_LITERAL)
    span = np.repeat(np.arange(len(nlit)), nlit)
    k = np.arange(len(span)) - np.repeat(np.cumsum(nlit) - nlit, nlit)
    lit_src = lit_lo[span] + k * _MAX_LITERAL
    lit_len = np.minimum(lit_hi[span] - lit_src, _MAX_LITERAL)
    # All tokens in stream order, with their encoded sizes.
    src = np.concatenate((lit_src, ref_src))
    length = np.concatenate((lit_len, ref_len))
    is_ref = np.concatenate((np.zeros(len(lit_src), bool), np.ones(len(ref_src), bool)))
    order = np.argsort(src, kind="stable")
    src, length, is_ref = src[order], length[order], is_ref[order]
    size = np.where(is_ref, np.where(length - 2 < 7, 2, 3), 1 + length)
    at = np.cumsum(size) - size  # output offset of each token
    out = np.zeros(int(size.sum()), dtype=np.uint8)
    lit = ~is_ref
    out[at[lit]] = length[lit] - 1
    total = int(length[lit].sum())
    tok = np.repeat(np.flatnonzero(lit), length[lit])
    pos = np.arange(total) - np.repeat(np.cumsum(length[lit]) - length[lit], length[lit])
    out[at[tok] + 1 + pos] = data[src[tok] + pos]
    short = is_ref & (length - 2 < 7)
    out[at[short]] = (length[short] - 2) << 5  # offset 0 (one byte back): second byte is 0
    longer = is_ref & ~short
    out[at[longer]] = 7 << 5
    out[at[longer] + 1] = length[longer] - 9
    return out.tobytes()


def _chunk_starts(shape: tuple[int, ...], chunks: tuple[int, ...]):
    """Origins of all chunks of a dataset, in C order (deterministic)."""
    grids = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    return itertools.product(*grids)


def write_lzf_chunks(ds: h5py.Dataset, data: np.ndarray, start: int = 0) -> None:
    """Write ``data`` into rows ``start`` ... of ``ds`` (created with ``shuffle=True,
    compression="lzf"``, any chunking; ``start`` a multiple of the chunk's first extent) chunk
    by chunk, deterministically. Edge chunks are stored whole, as HDF5 does, with the part
    outside the dataset zero-filled."""
    filters = [ds.id.get_create_plist().get_filter(i)[0] for i in range(2)]
    if filters != [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_LZF]:
        raise ValueError(f"{ds.name}: expected the filters shuffle then lzf, got {filters}")
    chunks = ds.chunks
    if data.shape[1:] != ds.shape[1:] or start % chunks[0] or start + len(data) > len(ds):
        raise ValueError(f"{ds.name}: rows {start}+{data.shape} do not fit {ds.shape}/{chunks}")
    for origin in _chunk_starts(data.shape, chunks):
        sel = tuple(slice(o, o + c) for o, c in zip(origin, chunks, strict=True))
        block = data[sel]
        if block.shape != chunks:  # an edge chunk: pad to the full chunk
            full = np.zeros(chunks, dtype=data.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        shuffled = shuffle_bytes(block)
        coded = lzf_encode(shuffled)
        at = (origin[0] + start, *origin[1:])
        if 0 < len(coded) < shuffled.size:
            ds.id.write_direct_chunk(at, coded)
        else:  # incompressible: shuffled only, the LZF filter (pipeline index 1) marked skipped
            ds.id.write_direct_chunk(at, shuffled.tobytes(), filter_mask=0b10)
