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


# How kernel timings are taken (recorded with every kernel result). Wall clock around one
# synchronised call would add the host's launch and input-check time to every sample, which at
# (16,16,1024,64) is a large share of a ~0.15 ms forward and biases small shapes.
KERNEL_TIMING = {
    "method": "CUDA events around back-to-back calls (no synchronisation or cache flush between "
    "calls), time per call = elapsed / calls, median over rounds",
    "calls_per_round": 20,
    "rounds": 7,
    "warmup_calls": 5,
}
SMOKE_TIMING = {
    "method": "CPU wall clock (perf_counter) around back-to-back calls, median over rounds: "
    "checks the plumbing only",
    "calls_per_round": 1,
    "rounds": 2,
    "warmup_calls": 1,
}


def per_call_ms(
    step: Callable[[], Any], device: torch.device, timing: dict[str, Any] | None = None
) -> float:
    """Milliseconds per call of ``step``, timed as ``timing`` says (``KERNEL_TIMING`` on CUDA,
    ``SMOKE_TIMING`` elsewhere): warm-up calls, then rounds of back-to-back calls between two
    CUDA events, so the device stays busy and host overhead hides behind device work."""
    timing = timing or (KERNEL_TIMING if device.type == "cuda" else SMOKE_TIMING)
    calls, rounds = timing["calls_per_round"], timing["rounds"]
    for _ in range(timing["warmup_calls"]):
        step()
    samples = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                step()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            samples.append(1e3 * (time.perf_counter() - t0) / calls)
    samples.sort()
    return samples[len(samples) // 2]


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
