"""Position and time encodings shared by every modality."""

from __future__ import annotations

import math

import torch

NS_PER_HOUR = 3_600_000_000_000
NS_PER_DAY = 24 * NS_PER_HOUR
N_FREQ = 4
POS_FEATURES = 3 + 6 * N_FREQ + 1  # xyz on the sphere, its harmonics, depth
TIME_FEATURES = 5  # time of day (sin, cos), day of year (sin, cos), lead time


def sphere_features(
    lat_deg: torch.Tensor, lon_deg: torch.Tensor, depth_km: torch.Tensor | None = None
) -> torch.Tensor:
    """Position on the unit sphere and its harmonics — no seam at the dateline or the poles —
    plus depth (km below the surface; negative = elevation). (...,) → (..., POS_FEATURES)."""
    lat, lon = torch.deg2rad(lat_deg.double()), torch.deg2rad(lon_deg.double())
    xyz = torch.stack(
        [torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1
    )  # (..., 3)
    k = torch.arange(1, N_FREQ + 1, dtype=xyz.dtype, device=xyz.device) * math.pi
    ang = xyz[..., None] * k  # (..., 3, F)
    depth = torch.zeros_like(lat) if depth_km is None else depth_km.double() / 10.0
    feats = [xyz, torch.sin(ang).flatten(-2), torch.cos(ang).flatten(-2), depth[..., None]]
    return torch.cat(feats, -1).float()


def time_features(times_ns: torch.Tensor, lead_ns: torch.Tensor | int = 0) -> torch.Tensor:
    """Time of day and day of year as sin/cos pairs, and the lead time in days.
    times_ns: (...,) int64 → (..., TIME_FEATURES)."""
    tod = (times_ns % NS_PER_DAY).double() / NS_PER_DAY
    doy = (times_ns // NS_PER_DAY).double() / 365.2425
    ang = 2 * math.pi * torch.stack([tod, doy], -1)
    lead = torch.as_tensor(lead_ns, device=times_ns.device).double() / NS_PER_DAY
    lead = lead.expand(times_ns.shape)[..., None]
    return torch.cat([torch.sin(ang), torch.cos(ang), lead], -1).float()


def patch_centres(coord: torch.Tensor, patch: int) -> torch.Tensor:
    """Centre coordinate of each patch along one axis, extrapolating over padded cells."""
    n = coord.shape[0]
    n_pad = -(-n // patch) * patch
    step = (coord[-1] - coord[0]) / max(n - 1, 1)
    full = coord[0] + step * torch.arange(n_pad, dtype=coord.dtype, device=coord.device)
    full[:n] = coord
    return full.reshape(-1, patch).mean(-1)
