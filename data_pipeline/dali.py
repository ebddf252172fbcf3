"""NVIDIA DALI loader for forecast batches: the same batches as the PyTorch path, built by DALI.

``DaliForecastLoader(ds, batches)`` yields, batch for batch, what
``DataLoader(ds, batch_sampler=batches, collate_fn=collate_forecast)`` yields (DESIGN.md §7):
the keys, dtypes and shapes of :func:`~.loader.collate_forecast`, and the same values bit for bit
(``tests/test_dali.py``). The work is split so that DALI does the arithmetic:

* a Python callback (the external source) reads raw frames through
  :meth:`~.loader.ForecastDataset.raw_item` and returns them with NaN → 0 plus a bool mask,
  since DALI arithmetic has no ``isnan``/``where``;
* the DALI graph crops (optional), computes ``(x − mean) / std · mask`` in float32 — the op order
  of :func:`~.loader.normalise`, so both paths round identically — and transposes fields from
  ``(T, V, H, W)`` to ``(V, T, H, W)``.

DALI is optional (``pip install nvidia-dali-cuda120``, the ``gpu`` extra). It is imported lazily,
so this module imports without it and :func:`dali_available` can be asked first. There is no DALI
for AMD/ROCm: use the PyTorch path there.

``device="gpu"`` builds the same graph with GPU ops, but it is untested: DALI cannot be
installed on this project's GPU test machines, so only the CPU variant runs in the tests.
"""

from __future__ import annotations

import operator
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .loader import ForecastDataset
from .variables import modality_id

if TYPE_CHECKING:
    from nvidia.dali import Pipeline
    from nvidia.dali.types import BatchInfo

__all__ = ["DALI_INSTALL_HINT", "DaliForecastLoader", "dali_available"]

Device = Literal["cpu", "gpu"]
StartMethod = Literal["fork", "spawn"]

DALI_INSTALL_HINT = (
    "NVIDIA DALI is not installed. Fix: `pip install nvidia-dali-cuda120` (or the `gpu` extra, "
    "`pip install scigpt[gpu]`); its CPU pipelines also run without a GPU. AMD/ROCm clusters have "
    "no DALI build: use the PyTorch path there (DataLoader(dataset, batch_sampler=..., "
    "collate_fn=collate_forecast))."
)


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports in this environment."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _import_dali() -> Any:
    """The ``nvidia.dali`` package, or an ImportError that says how to install it."""
    try:
        # The submodules are used as attributes of ``dali``; importing them here makes a
        # half-installed DALI fail now, with the hint, rather than at the first batch.
        import nvidia.dali as dali
        import nvidia.dali.fn
        import nvidia.dali.plugin.pytorch
        import nvidia.dali.tensors
        import nvidia.dali.types  # noqa: F401
    except ImportError as err:
        raise ImportError(DALI_INSTALL_HINT) from err
    return dali


class _BatchSource:
    """External-source callback: batch ``k`` of a fixed plan → raw arrays, one list per output.

    Per batch (``batch=True``) rather than per sample: DALI's per-sample mode always asks for
    ``max_batch_size`` samples per iteration, so a short batch would need padding reads and a trim;
    in batch mode the callback returns exactly the batch, of any size up to the maximum. It is
    stateless given the plan (batch ``k`` depends only on ``info.iteration``), which DALI's
    parallel mode requires, and picklable for ``spawn`` workers.
    """

    def __init__(self, dataset: ForecastDataset, plan: Sequence[Sequence[int]]) -> None:
        self._dataset = dataset
        self._plan = plan
        self._pid = os.getpid()

    def __call__(self, info: BatchInfo) -> tuple[list[np.ndarray], ...]:
        k = info.iteration
        if k >= len(self._plan):
            # DALI prefetches past the end; it needs StopIteration every time it asks.
            raise StopIteration
        if os.getpid() != self._pid:
            # A forked worker inherits the parent's open HDF5 handles, which must not be shared
            # across processes; a pickled copy drops them (PatchStore.__getstate__) and reopens
            # its shards lazily in this process.
            self._dataset = pickle.loads(pickle.dumps(self._dataset))
            self._pid = os.getpid()
        fields, fields_mask, target, target_mask, times = [], [], [], [], []
        for i in self._plan[k]:
            fields_raw, target_raw, time = self._dataset.raw_item(i)
            pairs = ((fields_raw, fields, fields_mask), (target_raw, target, target_mask))
            for raw, values, mask in pairs:
                # C order: DALI takes dense samples only, and raw_item's variable selection may
                # return another layout.
                valid = np.ascontiguousarray(~np.isnan(raw))
                # Same fill as loader.normalise; DALI then applies the arithmetic to it.
                filled = np.where(valid, raw, np.float32(0))
                values.append(np.ascontiguousarray(filled, dtype=np.float32))
                mask.append(valid)  # bool: a quarter of a float32 mask in worker shared memory
            times.append(np.asarray(time, dtype=np.int64))  # () int64 ns
        return fields, fields_mask, target, target_mask, times


class DaliForecastLoader:
    """Batches of a :class:`~.loader.ForecastDataset` built by a DALI pipeline.

    ``batches`` is what ``DataLoader(batch_sampler=...)`` would get: an iterable of lists of
    dataset indices, one list per micro-batch; sizes may differ (a short last batch). Each
    ``iter()`` materialises one pass of ``batches`` (so it must be finite; a re-iterable batch
    sampler gives a fresh order per pass) and builds a pipeline for it with the largest batch
    as DALI's ``max_batch_size``; the external source then feeds each batch at its own size.

    Args:
        dataset: the samples; its ``mean32``/``std32`` become constant tensors of the graph.
        batches: lists of dataset indices, one per micro-batch.
        num_threads: DALI CPU threads for the graph's ops.
        device: ``"cpu"`` or ``"gpu"``. ``"gpu"`` runs normalisation and transpose on GPU
            ``device_id`` and yields ``fields``/``target``/``mask`` on ``cuda:device_id``
            (``times`` and the shared keys stay on the CPU, as from ``collate_forecast``).
            Untested: DALI cannot be installed on this project's GPU test machines.
        device_id: CUDA device for ``device="gpu"``; default ``torch.cuda.current_device()``,
            which is the local rank once the trainer has called ``torch.cuda.set_device``.
        parallel: run the reading callback in ``num_workers`` Python worker processes (DALI's
            parallel external source); up to ``max(2, num_workers)`` batches are read ahead.
        num_workers: worker processes when ``parallel``.
        start_method: how workers start when ``parallel``. Default: ``"fork"`` (fast), but
            ``"spawn"`` for ``device="gpu"`` or once CUDA is initialised, since a CUDA context
            cannot be forked. ``"spawn"`` pickles the dataset; its store reopens files lazily.
        crop: ``(h, w)``: keep the top-left ``h × w`` of every field (and ``lat[:h]``,
            ``lon[:w]``), as a DALI slice before the arithmetic.
        prefetch_queue_depth: DALI pipeline batches in flight.
    """

    def __init__(
        self,
        dataset: ForecastDataset,
        batches: Iterable[Sequence[int]],
        *,
        num_threads: int = 2,
        device: Device = "cpu",
        device_id: int | None = None,
        parallel: bool = False,
        num_workers: int = 2,
        start_method: StartMethod | None = None,
        crop: tuple[int, int] | None = None,
        prefetch_queue_depth: int = 2,
    ) -> None:
        self._dali = _import_dali()
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        for name, value in (
            ("num_threads", num_threads),
            ("num_workers", num_workers),
            ("prefetch_queue_depth", prefetch_queue_depth),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if start_method not in (None, "fork", "spawn"):
            raise ValueError(f"start_method must be 'fork', 'spawn' or None, got {start_method!r}")
        height, width = dataset.store.height, dataset.store.width
        if crop is not None:
            h, w = (int(c) for c in crop)
            if not (1 <= h <= height and 1 <= w <= width):
                raise ValueError(
                    f"crop {tuple(crop)} does not fit the grid ({height}, {width}). Fix: pass "
                    f"(h, w) with 1 <= h <= {height} and 1 <= w <= {width}, or crop=None."
                )
            crop = (h, w)
        if device == "gpu" and device_id is None:
            device_id = torch.cuda.current_device()
        self.dataset = dataset
        self.batches = batches
        self.num_threads = num_threads
        self.device: Device = device
        self.device_id = device_id if device == "gpu" else None
        self.parallel = bool(parallel)
        self.num_workers = num_workers
        self.start_method = start_method
        self.crop = crop
        self.prefetch_queue_depth = prefetch_queue_depth

        # The per-source keys of collate_forecast, from the dataset's public attributes.
        store = dataset.store
        var_ids = np.array([store.names.index(v.name) for v in dataset.variables], np.int64)
        lat = np.asarray(store.lat, dtype=np.float32)  # (H,)
        lon = np.asarray(store.lon, dtype=np.float32)  # (W,)
        if crop is not None:
            lat, lon = lat[: crop[0]], lon[: crop[1]]
        self._shared: dict[str, Any] = {
            "var_ids": torch.from_numpy(var_ids),  # (V,) long
            "modality_id": modality_id("grid"),
            "lat": torch.from_numpy(np.ascontiguousarray(lat)),  # (h,)
            "lon": torch.from_numpy(np.ascontiguousarray(lon)),  # (w,)
        }

    def __len__(self) -> int:
        """Number of batches per pass (needs ``batches`` to have a length)."""
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self._plan()
        if not plan:
            return
        pipe = self._build(plan)
        try:
            # Exactly one run per planned batch; the callback's StopIteration past the end only
            # stops DALI's read-ahead.
            for _ in plan:
                fields, target, mask, times = pipe.run()
                yield {
                    "fields": self._to_torch(fields),  # (B, V, T, h, w)
                    "target": self._to_torch(target),  # (B, V, h, w)
                    "mask": self._to_torch(mask),  # (B, V, h, w) bool
                    "times": self._to_torch(times),  # (B,) int64
                    **self._shared,
                }
        finally:
            # Dropping the last reference shuts the pipeline down, parallel workers included,
            # also when the consumer stops early.
            del pipe

    def _plan(self) -> list[list[int]]:
        """One pass of ``batches`` as lists of ints, checked against the dataset."""
        n = len(self.dataset)
        plan = []
        for k, batch in enumerate(self.batches):
            try:
                idx = [operator.index(i) for i in batch]
            except TypeError:
                raise ValueError(
                    f"batch {k} is {batch!r}: a batch must be a list of integer dataset indices"
                ) from None
            if not idx:
                raise ValueError(f"batch {k} is empty; every batch needs at least one index")
            bad = [i for i in idx if not 0 <= i < n]
            if bad:
                raise ValueError(
                    f"batch {k} holds indices {bad} outside the dataset's [0, {n}). Fix: build "
                    "the batch sampler for this dataset's length."
                )
            plan.append(idx)
        return plan

    def _start_method(self) -> StartMethod:
        if self.start_method is not None:
            return self.start_method
        # fork is fast but cannot carry a CUDA context into the child (DALI refuses).
        cuda_live = torch.cuda.is_available() and torch.cuda.is_initialized()
        return "spawn" if self.device == "gpu" or cuda_live else "fork"

    def _build(self, plan: list[list[int]]) -> Pipeline:
        dali = self._dali
        fn, types = dali.fn, dali.types
        source = _BatchSource(self.dataset, plan)
        pipe = dali.Pipeline(
            batch_size=max(len(b) for b in plan),
            num_threads=self.num_threads,
            device_id=self.device_id,
            prefetch_queue_depth=self.prefetch_queue_depth,
            py_num_workers=self.num_workers if self.parallel else 1,
            py_start_method=self._start_method(),
        )
        es_args: dict[str, Any] = {}
        if self.parallel:
            # Batch mode: each worker reads whole batches, so read-ahead depth = parallelism.
            es_args = {"parallel": True, "prefetch_queue_depth": max(2, self.num_workers)}
        with pipe:
            fields, fields_mask, target, target_mask, times = fn.external_source(
                source, num_outputs=5, batch=True, batch_info=True, **es_args
            )  # (T, V, H, W) f32, (T, V, H, W) bool, (V, H, W) f32, (V, H, W) bool, () i64
            if self.crop is not None:
                # Before the arithmetic and before any host→device copy: less data for both.
                h, w = self.crop
                fields, fields_mask = fields[:, :, :h, :w], fields_mask[:, :, :h, :w]
                target, target_mask = target[:, :h, :w], target_mask[:, :h, :w]
            dev = self.device
            if dev == "gpu":
                fields, fields_mask = fields.gpu(), fields_mask.gpu()
                target, target_mask = target.gpu(), target_mask.gpu()
            mean = types.Constant(self.dataset.mean32, device=dev)  # (V, 1, 1) f32
            std = types.Constant(self.dataset.std32, device=dev)  # (V, 1, 1) f32
            # loader.normalise's float32 op order: subtract, divide, multiply by the 0/1 mask.
            fields = (fields - mean) / std * fn.cast(fields_mask, dtype=types.FLOAT)
            target = (target - mean) / std * fn.cast(target_mask, dtype=types.FLOAT)
            fields = fn.transpose(fields, perm=[1, 0, 2, 3])  # (V, T, h, w)
            pipe.set_outputs(fields, target, target_mask, times)
        pipe.build()
        return pipe

    def _to_torch(self, out: Any) -> torch.Tensor:
        """Copy one DALI output (a batch of equal-shaped samples) into a new torch tensor."""
        feed_ndarray = self._dali.plugin.pytorch.feed_ndarray
        to_torch_type = self._dali.plugin.pytorch.to_torch_type
        dense = out.as_tensor()  # (B, ...) contiguous
        gpu = isinstance(out, self._dali.tensors.TensorListGPU)
        device = torch.device("cuda", self.device_id) if gpu else torch.device("cpu")
        result = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
        # On GPU: copy on torch's current stream, so torch's later work on it is ordered after.
        stream = torch.cuda.current_stream(device) if gpu else None
        return feed_ndarray(dense, result, cuda_stream=stream)
