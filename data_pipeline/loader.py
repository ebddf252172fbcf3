"""Forecast samples from a :class:`GridStore`, and the batch format of DESIGN.md §7 for grids.

This first loader reads the whole time range it needs once, in ``__init__``: the demo stores are
a few MB. The sharded, streaming, rank-aware loader (and the DALI one) comes later and yields the
same items and batches. Ranks, when they arrive, are plain integers; nothing here imports
``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from .store import GridStore
from .variables import modality_id


class ForecastDataset(torch.utils.data.Dataset):
    """Samples ``(frames t-history+1 .. t) → frame t+lead`` anchored at input time ``t``.

    The anchor and the target lie inside ``time_range`` (inclusive); the history frames before
    the anchor may precede it. Frames are consecutive store indices with a uniform time step.
    Values are normalised with the store's mean/std; NaNs become 0 after normalisation and
    ``mask`` records where they were.
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
    ) -> None:
        if history < 1 or lead < 1:
            raise ValueError(f"history ({history}) and lead ({lead}) must both be >= 1")
        self.history = int(history)
        self.lead = int(lead)
        self.normalise = bool(normalise)

        names = store.names
        wanted = list(names) if variables is None else list(variables)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"variables {missing} are not in the store; it has {names}")
        var_idx = np.array([names.index(n) for n in wanted], dtype=np.int64)  # (V,)
        self.variables = [store.variables[i] for i in var_idx]

        t0, t1 = (np.datetime64(t, "ns") for t in time_range)
        idx = np.flatnonzero((store.time >= t0) & (store.time <= t1))
        # The anchor (last input frame) and the target lie inside time_range; earlier history
        # frames may precede it, since they are known when the forecast is made. So a test block
        # that starts where training ends shares no *target* with training.
        first_anchor = max(int(idx[0]), self.history - 1) if idx.size else 0
        last_anchor = int(idx[-1]) - self.lead if idx.size else -1
        if last_anchor < first_anchor:
            raise ValueError(
                f"time_range [{t0}, {t1}] holds {idx.size} store times: no sample has its anchor "
                f"and its target (lead {self.lead}) inside it with {self.history - 1} earlier "
                "frames in the store. Fix: widen time_range or shorten history/lead."
            )
        i0 = first_anchor - (self.history - 1)
        i1 = last_anchor + self.lead + 1
        steps = np.diff(store.time[i0:i1].astype(np.int64))
        if np.any(steps != steps[0]):
            bad = int(np.flatnonzero(steps != steps[0])[0])
            raise ValueError(
                f"time step is not uniform inside time_range: {store.time[i0 + bad]} → "
                f"{store.time[i0 + bad + 1]} differs from the first step "
                f"({np.timedelta64(int(steps[0]), 'ns')}). Fix: choose a range without gaps."
            )
        self.time_step_ns = int(steps[0])
        self._i0 = i0
        self._times = store.time[i0:i1].astype(np.int64)  # (N,) ns
        self._len = last_anchor - first_anchor + 1

        data = store.read(i0, i1)[:, var_idx]  # (N, V, H, W) float32
        mask = ~np.isnan(data)
        if self.normalise:
            mean, std = store.mean[var_idx], store.std[var_idx]
            bad_vars = [v.name for v, s in zip(self.variables, std, strict=True) if not s > 0]
            if bad_vars:
                raise ValueError(
                    f"variables {bad_vars} have std 0 or NaN in the store stats, so they cannot "
                    "be normalised. Fix: drop them (variables=...) or re-ingest with a wider "
                    "stats_time_range."
                )
            # Normalise in float64 and round once; the store keeps mean/std in float64.
            data = (data - mean[:, None, None]) / std[:, None, None]
        self._data = np.where(mask, data, 0.0).astype(np.float32)  # (N, V, H, W)
        self._mask = mask  # (N, V, H, W)

        # Shared by every item of this dataset (and so by a batch); see collate_forecast.
        self._var_ids = torch.from_numpy(var_idx)  # (V,) long
        self._lat = torch.from_numpy(store.lat.astype(np.float32))  # (H,)
        self._lon = torch.from_numpy(store.lon.astype(np.float32))  # (W,)
        self._modality_id = modality_id("grid")

    def __len__(self) -> int:
        return self._len

    def anchor_index(self, i: int) -> int:
        """Store time index of sample ``i``'s anchor (its last input frame)."""
        return self._i0 + self.history - 1 + i

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self._len:
            raise IndexError(f"sample {i} out of range for {self._len} samples")
        a = self.history - 1 + i  # anchor, local index
        fields = self._data[a - self.history + 1 : a + 1]  # (T, V, H, W)
        target = a + self.lead
        return {
            "fields": torch.from_numpy(np.ascontiguousarray(fields.transpose(1, 0, 2, 3))),
            "target": torch.from_numpy(self._data[target].copy()),  # (V, H, W)
            "mask": torch.from_numpy(self._mask[target].copy()),  # (V, H, W)
            "time": torch.tensor(self._times[a], dtype=torch.int64),
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
