"""Forecast samples from a :class:`GridStore`, and the batch format of DESIGN.md §7 for grids.

Items are read from the patch store on demand; the DALI path (``dali.py``) yields the same
batches. Ranks are plain integers (``sampler.py``); nothing here imports
``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from .splits import inside_block, window_last_ns
from .store import GridStore
from .variables import modality_id


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``((x − mean) / std) · mask`` in float32 with NaN → 0, and the mask (True = valid).

    The exact float32 operation order the DALI pipeline repeats with its own ops, so both paths
    give identical batches. ``mean``/``std`` broadcast against ``x`` (variables on their axis).
    """
    mask = ~np.isnan(x)
    filled = np.where(mask, x, np.float32(0)).astype(np.float32, copy=False)
    same_shape = np.broadcast_shapes(filled.shape, mean.shape, std.shape) == filled.shape
    if mean.dtype == std.dtype == np.dtype(np.float32) and same_shape:
        # the same float32 ufuncs in the same order, in place: no temporaries (full-size frames)
        np.subtract(filled, mean, out=filled)
        np.divide(filled, std, out=filled)
        np.multiply(filled, mask, out=filled)
        return filled, mask
    out = (filled - mean) / std * mask.astype(np.float32)
    return out.astype(np.float32, copy=False), mask


class ForecastDataset(torch.utils.data.Dataset):
    """Samples ``(frames t-history+1 .. t) → frame t+lead`` anchored at input time ``t``.

    With ``outputs`` (an operator task, e.g. PDE solutions: history 1, lead 0) a sample is one
    frame whose ``outputs`` variables are hidden from the inputs (NaN → 0) and are the only
    valid values of its target (``mask``): the model learns the map from the other fields.

    The anchor and the target lie inside ``time_range`` (inclusive), and the anchor is at least
    ``gap`` after its start (so blocks that follow one another are ``gap`` apart); the history
    frames before the anchor may precede the range, since they are observed when the forecast is
    made. A sample's frames are consecutive time steps; samples across a gap in the data are left
    out. Items are read from the
    store on demand (a DataLoader worker opens each shard once) and normalised with the store's
    statistics; NaNs become 0 and ``mask`` records where they were.

    ``variables`` and ``crop`` (row0, col0, rows, cols in patch units: a fixed region) are read
    from the store as such: on a layout-2 store only the chunks they touch are decompressed.
    """

    def __init__(
        self,
        store: GridStore,
        *,
        time_range: tuple[np.datetime64, np.datetime64],
        history: int = 2,
        lead: int = 1,
        normalise: bool = True,
        variables: Sequence[str] | None = None,
        gap: np.timedelta64 | None = None,
        var_ids: Sequence[int] | None = None,
        outputs: Sequence[str] | None = None,
        crop: Sequence[int] | None = None,
    ) -> None:
        if outputs:  # operator task: the same frame's outputs from its other variables
            if history != 1 or lead != 0:
                raise ValueError(
                    f"an operator dataset (outputs={list(outputs)}) maps one frame to itself: "
                    f"history must be 1 and lead 0, got {history} and {lead}"
                )
        elif history < 1 or lead < 1:
            raise ValueError(f"history ({history}) and lead ({lead}) must both be >= 1")
        self.store = store
        # a fixed region, (row0, col0, rows, cols) in patch units: only its chunks are read
        self.crop = store.check_crop(crop)
        self.history = int(history)
        self.lead = int(lead)
        self.normalise = bool(normalise)

        names = store.names
        wanted = list(names) if variables is None else list(variables)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"variables {missing} are not in the store; it has {names}")
        var_idx = np.array([names.index(n) for n in wanted], dtype=np.int64)  # (V,)
        self._var_idx = var_idx
        self.variables = [store.variables[i] for i in var_idx]
        missing_out = [n for n in (outputs or ()) if n not in wanted]
        if missing_out:
            raise ValueError(f"operator outputs {missing_out} are not among {wanted}")
        self.outputs = list(outputs or ())
        self._is_output = np.array([n in self.outputs for n in wanted])  # (V,)

        t0, t1 = (np.datetime64(t, "ns") for t in time_range)
        first_ok = t0 + (gap if gap is not None else np.timedelta64(0, "ns"))
        times = store.time.astype("datetime64[ns]").astype(np.int64)  # (N,)
        if len(times) < 2:
            raise ValueError(f"the store holds {len(times)} time(s): forecasting needs two or more")
        # The time step is the store's most common one; a sample whose frames are not
        # consecutive steps (a gap in the data, a skipped corrupt shard) is left out, not bridged.
        diffs = np.diff(times)
        vals, counts = np.unique(diffs, return_counts=True)
        step = int(vals[np.argmax(counts)])
        span = np.arange(-(self.history - 1), self.lead + 1)  # frame offsets around the anchor
        cand = np.flatnonzero((times >= first_ok.astype(np.int64)) & (times <= t1.astype(np.int64)))
        cand = cand[(cand - (self.history - 1) >= 0) & (cand + self.lead < len(times))]
        if cand.size:
            frame_t = times[cand[:, None] + span]  # (A, history + lead)
            ok = np.all(np.diff(frame_t, axis=1) == step, axis=1)
            ok &= frame_t[:, -1] <= t1.astype(np.int64)  # the target inside the range
            cand = cand[ok]
        if cand.size == 0:
            raise ValueError(
                f"time_range [{t0}, {t1}]: no sample has its anchor and its target (lead "
                f"{self.lead}) inside it with {self.history - 1} earlier frames, all "
                f"{np.timedelta64(step, 'ns')} apart. Fix: widen time_range, shorten history/"
                "lead, or fill the gaps in the data."
            )
        self.time_step_ns = step
        self._anchors = cand.astype(np.int64)
        self._len = int(cand.size)

        mean, std = store.mean[var_idx], store.std[var_idx]
        if self.normalise:
            bad_vars = [v.name for v, s in zip(self.variables, std, strict=True) if not s > 0]
            if bad_vars:
                raise ValueError(
                    f"variables {bad_vars} have std 0 or NaN in the store stats, so they cannot "
                    "be normalised. Fix: drop them (variables=...) or re-ingest with a wider "
                    "stats time range."
                )
        else:
            mean, std = np.zeros_like(mean), np.ones_like(std)
        # float32, shaped to broadcast over (V, H, W): the same constants the DALI path uses.
        self.mean32 = mean.astype(np.float32)[:, None, None]
        self.std32 = std.astype(np.float32)[:, None, None]

        # Shared by every item of this dataset (and so by a batch); see collate_forecast.
        # Ids in the model's variable registry: the store's order unless a registry shared by
        # several sources maps them (``var_ids``, one per selected variable).
        if var_ids is not None and len(var_ids) != len(var_idx):
            raise ValueError(f"{len(var_ids)} var_ids for {len(var_idx)} variables")
        self._var_ids = torch.as_tensor(var_idx if var_ids is None else list(var_ids))
        rows, cols = store.crop_slices(self.crop)
        lat, lon = np.asarray(store.lat, np.float32), np.asarray(store.lon, np.float32)
        lat = lat[rows] if lat.ndim == 1 else lat[rows, cols]
        lon = lon[cols] if lon.ndim == 1 else lon[rows, cols]
        self._lat = torch.from_numpy(np.ascontiguousarray(lat))  # (H,) of the crop
        self._lon = torch.from_numpy(np.ascontiguousarray(lon))  # (W,)
        self._modality_id = modality_id("grid")

    def __len__(self) -> int:
        return self._len

    def anchor_index(self, i: int) -> int:
        """Store time index of sample ``i``'s anchor (its last input frame)."""
        return int(self._anchors[i])

    def raw_item(self, i: int) -> tuple[np.ndarray, np.ndarray, np.int64]:
        """Un-normalised frames ``(T, V, H, W)``, target ``(V, H, W)`` (NaN = missing), time."""
        if not 0 <= i < self._len:
            raise IndexError(f"sample {i} out of range for {self._len} samples")
        a = self.anchor_index(i)
        frames = self.store.read(
            a - self.history + 1, a + self.lead + 1, variables=self._var_idx, crop=self.crop
        )
        return frames[: self.history], frames[-1], np.int64(self.store.time[a].astype(np.int64))

    def __getitem__(self, i: int) -> dict[str, Any]:
        fields_raw, target_raw, time = self.raw_item(i)
        if self.outputs:  # hidden from the inputs (0 after normalising), scored in the target
            fields_raw = fields_raw.copy()
            fields_raw[:, self._is_output] = np.nan
        fields, _ = normalise(fields_raw, self.mean32, self.std32)  # (T, V, H, W)
        target, mask = normalise(target_raw, self.mean32, self.std32)  # (V, H, W)
        if self.outputs:
            mask &= self._is_output[:, None, None]
        return {
            "fields": torch.from_numpy(np.ascontiguousarray(fields.transpose(1, 0, 2, 3))),
            "target": torch.from_numpy(target),
            "mask": torch.from_numpy(mask),
            "time": torch.tensor(time, dtype=torch.int64),
            "var_ids": self._var_ids,
            "modality_id": self._modality_id,
            "lat": self._lat,
            "lon": self._lon,
        }


_Array = TypeVar("_Array", torch.Tensor, np.ndarray)


def _shared(items: Sequence[dict[str, Any]], key: str) -> Any:
    """The per-source value all items must share (one source per micro-batch, DESIGN.md §7)."""
    first = items[0][key]
    for item in items[1:]:
        other = item[key]
        same = torch.equal(first, other) if isinstance(first, torch.Tensor) else first == other
        if not same:
            raise ValueError(
                f"collate_forecast: items disagree on {key!r}; a micro-batch holds samples of "
                "one source only. Fix: batch each source with its own DataLoader."
            )
    return first


def collate_forecast(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into the grid batch of DESIGN.md §7.

    Returns ``fields`` (B, V, T, H, W), ``target`` (B, V, H, W), ``mask`` (B, V, H, W),
    ``times`` (B,) int64 ns, and the per-source ``var_ids`` (V,) long, ``modality_id`` int,
    ``lat`` (H,) and ``lon`` (W,) float32 shared by the batch.
    """
    if not items:
        raise ValueError("collate_forecast got no items")
    # Check the per-source keys first: mixed sources should fail with this message, not with
    # torch.stack's shape error.
    shared = {key: _shared(items, key) for key in ("var_ids", "modality_id", "lat", "lon")}
    return {
        "fields": torch.stack([it["fields"] for it in items]),  # (B, V, T, H, W)
        "target": torch.stack([it["target"] for it in items]),  # (B, V, H, W)
        "mask": torch.stack([it["mask"] for it in items]),  # (B, V, H, W)
        "times": torch.stack([it["time"] for it in items]),  # (B,)
        "var_ids": shared["var_ids"],
        "modality_id": int(shared["modality_id"]),
        "lat": shared["lat"],
        "lon": shared["lon"],
    }


def denormalise(
    x: _Array,
    store: GridStore,
    *,
    var_axis: int = -3,
    var_ids: Sequence[int] | torch.Tensor | None = None,
) -> _Array:
    """Undo the normalisation: ``x * std + mean`` along ``var_axis`` (default -3: (…, V, H, W)).

    ``var_ids`` are the store indices of the variables ``x`` holds (a batch's ``var_ids``);
    default: all store variables in store order. Keeps the input's type and dtype.
    """
    if var_ids is None:
        ids = np.arange(len(store.variables))
    elif isinstance(var_ids, torch.Tensor):
        ids = var_ids.cpu().numpy().astype(np.int64)
    else:
        ids = np.asarray(var_ids, dtype=np.int64)
    if x.shape[var_axis] != len(ids):
        raise ValueError(
            f"denormalise: axis {var_axis} of x (shape {tuple(x.shape)}) has "
            f"{x.shape[var_axis]} entries but there are {len(ids)} variables. Fix: pass "
            "var_axis (e.g. -4 for (B, V, T, H, W) fields) or the batch's var_ids."
        )
    shape = [1] * x.ndim
    shape[var_axis % x.ndim] = len(ids)
    mean = store.mean[ids].reshape(shape)
    std = store.std[ids].reshape(shape)
    if isinstance(x, torch.Tensor):
        std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)
        mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
        return x * std_t + mean_t
    return (x * std + mean).astype(x.dtype)


def build_loader(dataset, batch_sampler, cfg, *, pin_memory: bool = False):
    """The PyTorch path: a DataLoader over ``dataset`` driven by ``batch_sampler``, with workers
    (each opens its shards once: stores reopen lazily after pickling), pinned memory and
    prefetching as configured (``cfg``: the run config's ``data.loader``)."""
    workers = cfg.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=dataset.collate,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=bool(workers),
    )


class SeriesWindowDataset(torch.utils.data.Dataset):
    """Windows of a series source (waveforms, station series) from a :class:`PatchStore`.

    An item is one stored window: ``fields`` (C, L) normalised with the source's statistics
    (NaN → 0, ``mask`` records where), the window's start ``time``, the record's ``lat``/``lon``
    (and ``depth`` when known), and numeric per-record attributes as ``targets`` (e.g. a
    SeisBench event's magnitude) for pooled regression heads. A window is in the dataset only
    if all of it lies inside ``time_range`` (inclusive; ``None`` = all) and it starts at least
    ``gap`` after the range's start (``data_pipeline.splits``, the rule the store's statistics
    use), so a window straddling a split boundary belongs to no split. ``var_ids``: the
    channels' ids in the run's variable registry.
    """

    def __init__(
        self,
        store,
        source: str,
        *,
        time_range: tuple[np.datetime64, np.datetime64] | None = None,
        targets: Sequence[str] = (),
        var_ids: Sequence[int] | None = None,
        gap: np.timedelta64 | None = None,
        horizon: int | None = None,
        tokenizer: str = "patch",
        stats: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        src = store.sources[source]
        if src.get("kind") != "series":
            raise ValueError(f"source {source!r} is {src.get('kind')!r}, not a series source")
        self.store, self.source, self.targets = store, source, list(targets)
        # a forecast window: its last ``horizon`` samples are forecast from the rest (context);
        # binned sources (Chronos-style tokens) get physical values, their scale is the model's
        self.horizon, self.tokenizer = horizon, tokenizer
        self.variables = store.variables(source)
        names = [v.name for v in self.variables]
        # a model's own statistics (a package scored on another store) or the store's
        mean, std = stats if stats is not None else store.stats(source)
        self.mean32 = np.asarray(mean).astype(np.float32)[:, None]
        self.std32 = np.asarray(std).astype(np.float32)[:, None]
        self.step_ns = 0
        self._rows: list[tuple[str, str, int, list[int]]] = []  # shard, group, row, channel map
        window = int(src["patch"]["window"])
        gap_ns = 0 if gap is None else int(np.timedelta64(gap, "ns").astype(np.int64))
        for unit in src["units"]:
            for a in unit["arrays"]:
                times = np.array(a["times"], dtype="datetime64[ns]").astype(np.int64)
                last = window_last_ns(times, window, int(a["step_ns"]))
                keep = inside_block(times, last, time_range, gap_ns=gap_ns)
                chans = [names.index(n) for n in a["variables"]]
                self.step_ns = self.step_ns or int(a["step_ns"])
                self._rows += [
                    (unit["shard"], a["group"], int(r), chans) for r in np.flatnonzero(keep)
                ]
        # the channels' ids in the run's variable registry (default: the source's own order)
        self._var_ids = torch.as_tensor(
            list(var_ids) if var_ids is not None else range(len(names)), dtype=torch.long
        )
        if len(self._var_ids) != len(names):
            raise ValueError(f"var_ids has {len(self._var_ids)} ids for {len(names)} channels")
        self._modality_id = modality_id(self.variables[0].modality)
        self.window = window
        if horizon is not None and not 0 < horizon < window:
            raise ValueError(f"source {source!r}: horizon={horizon} must be in (0, {window})")

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, group, row, chans = self._rows[i]
        g = self.store.file(shard)[group]
        patches = g["patches"][row]  # (c, P, K)
        raw = np.full(
            (len(self.variables), patches.shape[1] * patches.shape[2]), np.nan, np.float32
        )
        raw[chans] = patches.reshape(len(chans), -1)
        if self.tokenizer == "bins":
            mask = np.isfinite(raw)
            fields = np.where(mask, raw, 0.0).astype(np.float32)
        else:
            fields, mask = normalise(raw, self.mean32, self.std32)  # (C, L)
        attrs = g.get("attrs", {})
        tgt = [float(attrs[k][row]) if k in attrs else np.nan for k in self.targets]
        depth = float(g["depth"][row]) if "depth" in g else 0.0
        return {
            "fields": torch.from_numpy(fields),
            "mask": torch.from_numpy(mask),
            "time": torch.tensor(int(g["time"][row]), dtype=torch.int64),
            "lat": torch.tensor(float(g["lat"][row]), dtype=torch.float32),
            "lon": torch.tensor(float(g["lon"][row]), dtype=torch.float32),
            "depth": torch.tensor(depth, dtype=torch.float32),
            "targets": torch.tensor(tgt, dtype=torch.float32),
            "var_ids": self._var_ids,
            "modality_id": self._modality_id,
            "step_ns": self.step_ns,
            **(
                {"context": self.window - self.horizon, "tokenizer": self.tokenizer}
                if self.horizon
                else {}
            ),
        }


def collate_series(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack series items: ``fields``/``mask`` (B, C, L), per-sample ``times``, ``lat``, ``lon``,
    ``depth`` (B,), ``targets`` (B, K); ``var_ids``, ``modality_id``, ``step_ns`` shared."""
    if not items:
        raise ValueError("collate_series got no items")
    keys = ["var_ids", "modality_id", "step_ns"] + [
        k for k in ("context", "tokenizer") if k in items[0]
    ]  # forecast windows
    shared = {key: _shared(items, key) for key in keys}
    out = {k: torch.stack([it[k] for it in items]) for k in ("fields", "mask", "lat", "lon",
                                                             "depth", "targets")}  # fmt: skip
    out["times"] = torch.stack([it["time"] for it in items])
    return {**out, **shared, "modality_id": int(shared["modality_id"])}
