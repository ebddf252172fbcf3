"""Score a downscaling (super-resolution) model: the body of ``scigpt evaluate`` for a
``data.task: downscale`` run or package.

On the config's ``eval.split`` block (test by default) the model, bicubic interpolation of the
coarse input and a small CNN (``scigpt.models.srcnn.SRCNN``) trained with the run's budget
(``scigpt.eval.sr_baseline``: same steps, micro-batch, optimiser, schedule, training samples and
seed, chosen on the validation block) are scored with SuperBench's metrics
(``scigpt.eval.superres``) in physical units, per variable: RFNE, ∞-norm, PSNR, SSIM, MSE,
MAE; with a velocity pair (u10/v10, ns_u/ns_v, …) the kinetic-energy spectrum error by
wavenumber band and the divergence. Writes ``superres.json``, ``superres.md``, the coarse /
truth / prediction / error panels of the last sample per variable and the energy spectra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scigpt.atomic import atomic_write_text
from scigpt.config_loader import LoadedConfig
from scigpt.data_pipeline.downscale import DownscaleDataset, block_dataset
from scigpt.data_pipeline.store import GridStore
from scigpt.eval.forecast import evaluate_forecast
from scigpt.eval.metrics import lat_weights
from scigpt.eval.sr_baseline import predict, train_baseline
from scigpt.eval.superres import plot_panels, plot_spectra, superres_report
from scigpt.models.srcnn import SRCNN
from scigpt.tables import Table

# Velocity pairs the physics scores look for, in this order (u along x = W, v along y = H).
VELOCITY_PAIRS = (("ns_u", "ns_v"), ("u10", "v10"), ("u100", "v100"), ("u", "v"))
METRICS = ("rfne", "inf_norm", "psnr", "ssim", "mse", "mae")


def velocity_pair(names: list[str]) -> tuple[int, int] | None:
    """Channel indices of the first known velocity pair among ``names``."""
    for u, v in VELOCITY_PAIRS:
        if u in names and v in names:
            return names.index(u), names.index(v)
    return None


def check_downscale(pm, loaded: LoadedConfig) -> None:
    """A downscale config needs a downscale model with the same factor, and vice versa."""
    saved = (pm.config.get("run_config") or {}).get("data", {})
    ds = loaded.config.data.downscale
    if (saved.get("task") == "downscale") != (ds is not None):
        raise ValueError(
            "evaluate a downscale model (data.task: downscale) with a downscale config, and a "
            f"forecaster with a forecast config (the model's task: {saved.get('task')}, the "
            f"config's: {loaded.config.data.task})"
        )
    if ds is not None and saved.get("downscale", {}).get("factor") != ds.factor:
        raise ValueError(
            f"the model was trained at data.downscale.factor="
            f"{saved.get('downscale', {}).get('factor')}, the config asks for {ds.factor}: "
            "evaluate at the factor it was trained for"
        )


def _stack(ds: DownscaleDataset, key: str) -> torch.Tensor:
    return torch.stack([ds[i][key] for i in range(len(ds))])


def _physical(x: torch.Tensor, ds: DownscaleDataset) -> np.ndarray:
    return x.double().numpy() * ds.base.std32.astype(np.float64) + ds.base.mean32


def score_downscale(
    pm, loaded: LoadedConfig, store_dir: Path, out: Path, *, progress: bool = True
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Score the loaded downscale model ``pm`` on ``loaded``'s data (ingested in
    ``store_dir``) against bicubic and the CNN; write tables and plots to ``out``."""
    cfg = loaded.config
    check_downscale(pm, loaded)
    first = cfg.data.sources[0]
    splits = first.splits or cfg.data.splits
    store = GridStore(store_dir, source=first.name)
    names = list(store.names)
    ids = pm.var_ids(names).tolist()
    ds_cfg, patch = cfg.data.downscale, int(pm.model.tokenizer.patch)

    def block(name: str, var_ids=None) -> DownscaleDataset:
        return block_dataset(store, ds_cfg, splits, name, seed=cfg.seed, patch_size=patch,
                             var_ids=var_ids)  # fmt: skip

    test = block(cfg.eval.split, ids)
    device = next(pm.model.parameters()).device
    res = evaluate_forecast(pm.model, test, lat_weights(torch.as_tensor(test.lat)), device)
    torch.manual_seed(cfg.seed)
    cnn = SRCNN(len(names))
    val = block("val") if splits.val is not None else None
    cnn, choice = train_baseline(cnn, block("train"), val, cfg)
    cnn_pred = predict(cnn, test)
    coarse = _stack(test, "coarse")
    truth, cp = _physical(res["truth"], test), _physical(coarse, test)
    vel = velocity_pair(names)
    periodic = first.format == "pde"
    # grid spacing for the divergence: the PDE's own units, or metres (1° ≈ 111.195 km, the
    # meridional spacing; a regional crop's zonal spacing is shorter by cos(latitude))
    dx = float(abs(test.lon[1] - test.lon[0])) * (1.0 if periodic else 111_195.0)
    kw = {"velocity": vel, "names": names, "periodic": periodic, "dx": dx}
    model_rep = superres_report(_physical(res["pred"], test), truth, cp, ds_cfg.factor, **kw)
    cnn_rep = superres_report(_physical(cnn_pred, test), truth, cp, ds_cfg.factor, **kw)
    rows = model_rep["rows"] + [{**r, "method": "cnn"} for r in cnn_rep["rows"]
                                if r["method"] == "model"]  # fmt: skip
    physics = model_rep["physics"] + [{**r, "method": "cnn"} for r in cnn_rep["physics"]
                                      if r["method"] == "model"]  # fmt: skip
    summary = {
        "task": "downscale", "split": cfg.eval.split, "n_samples": len(test),
        "factor": ds_cfg.factor, "degradation": ds_cfg.degradation, "grid": list(test.shape),
        "rows": rows, "physics": physics,
        "rfne_gain": model_rep["rfne_gain"],  # 1 - RFNE_model / RFNE_bicubic (channel mean)
        "rfne_gain_cnn": cnn_rep["rfne_gain"], "cnn": {"params": sum(
            p.numel() for p in cnn.parameters()), **choice},
    }  # fmt: skip
    files = _write(out, summary, model_rep, cp, truth, _physical(res["pred"], test), names, vel)
    return files, summary


def _write(out: Path, summary, rep, coarse, truth, pred, names, vel) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"superres_json": out / "superres.json", "superres_md": out / "superres.md"}
    atomic_write_text(files["superres_json"], json.dumps(summary, indent=1, default=float) + "\n")
    atomic_write_text(files["superres_md"], superres_markdown(summary))
    for i, name in enumerate(names):
        files[f"panels_{name}"] = plot_panels(
            coarse[-1, i], truth[-1, i], pred[-1, i], out / f"superres_{name}.png",
            title=f"{name}: x{summary['factor']} ({summary['degradation']}), last sample",
        )  # fmt: skip
    if vel is not None:
        iu, iv = vel
        spectra = {"truth": (truth[:, iu], truth[:, iv]),
                   "bicubic": (rep["bicubic"][:, iu], rep["bicubic"][:, iv]),
                   "model": (pred[:, iu], pred[:, iv])}  # fmt: skip
        files["spectra"] = plot_spectra(spectra, out / "superres_spectra.png")
    return files


def superres_table(summary: dict[str, Any]) -> Table:
    """Per variable and method (model, bicubic, cnn): SuperBench's pixel scores."""
    table = Table(["variable", "method", *METRICS],
                  specs={m: ".4g" for m in METRICS}, right=METRICS)  # fmt: skip
    order = {"model": 0, "cnn": 1, "bicubic": 2}
    for r in sorted(summary["rows"], key=lambda r: (r["variable"], order[r["method"]])):
        table.add([r["variable"], r["method"], *(r[m] for m in METRICS)])
    return table


def superres_markdown(summary: dict[str, Any]) -> str:
    s = summary
    text = (
        f"# Downscaling x{s['factor']} ({s['degradation']}), {s['split']} block, "
        f"{s['n_samples']} samples on {s['grid'][0]} x {s['grid'][1]}\n\n"
        f"RFNE gain over bicubic (channel mean): model {100 * s['rfne_gain']:+.1f}%, CNN "
        f"({s['cnn']['params']} parameters, same budget) {100 * s['rfne_gain_cnn']:+.1f}%.\n\n"
        + superres_table(s).markdown()
        + "\n"
    )
    if s["physics"]:
        phys = Table.of(s["physics"])
        text += "\nKinetic-energy spectrum error by band and divergence RMS:\n\n"
        text += phys.markdown() + "\n"
    return text


__all__ = ["check_downscale", "score_downscale", "superres_markdown", "velocity_pair"]
