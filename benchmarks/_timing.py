"""Shared timing helpers of the benchmarks: step timing, clean-up, out-of-memory retries."""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch


def time_steps(step: Callable[[], Any], n: int, warmup: int, device: torch.device) -> list[float]:
    """Wall time of ``n`` calls of ``step`` after ``warmup`` untimed ones (GPU synchronised)."""
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def free(device: torch.device) -> None:
    """Drop compiled graphs and cached memory of the last configuration."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory(e: BaseException) -> bool:
    # Inductor and Triton autotuning can wrap the allocator's error in their own exceptions.
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def halving_on_oom(
    label: str, batch: int, run: Callable[[int], dict], device: torch.device, failed: list[str]
) -> dict | None:
    """``run(batch)``, halving the batch on out-of-memory; any other failure is printed with its
    traceback, recorded in ``failed`` and skipped (one failure must not cost the other rows)."""
    row = None
    while row is None and batch >= 1:
        try:
            row = run(batch)
        except Exception as e:
            if not out_of_memory(e):
                traceback.print_exc()
                print(f"{label}: FAILED ({type(e).__name__}): skipped", flush=True)
                failed.append(label)
                break
            print(f"{label}: out of memory at batch {batch}", flush=True)
            batch //= 2
        finally:
            free(device)
    return row
