"""Ahead-of-time compilation of the Triton kernels for Hopper (sm_90a), no GPU needed.

Every shipped autotune config of every kernel module in ``AOT_MODULES`` is compiled to PTX and a
cubin by ``python -m scigpt.kernels.aot --report --json``, in one subprocess without
``TRITON_INTERPRET`` (kernels decorated under the interpreter cannot be compiled, and other test
files turn it on). The report table (registers, spills, shared memory, wgmma) is printed; run
with ``-s`` to see it. Adding a kernel: define ``aot_cases()`` in its module and list it here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scigpt.kernels import aot

AOT_MODULES = ["scigpt.kernels.flash_attention", "scigpt.kernels.patch_embed"]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "scigpt.kernels.aot", "--report", "--json"]
    for module in AOT_MODULES:
        cmd += ["--module", module]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip(), f"no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\n" + aot.format_table(result))
    return result


def test_every_config_compiles_to_ptx_and_cubin(rows):
    assert rows
    errors = [f"{r['case']} {r['config']}: {r['error']}" for r in rows if r["error"]]
    assert not errors, "\n".join(errors)
    for r in rows:
        assert r["ptx_target"] == "sm_90a", r
        assert r["ptx_chars"] > 1000 and r["cubin_bytes"] > 1000, r


def test_dots_lower_to_hopper_wgmma(rows):
    """fp16/bf16 dots and fp32 3xTF32 dots use warpgroup MMA under every shipped config."""
    wrong = [
        f"{r['case']} {r['config']}: wgmma={r['uses_wgmma']}, expected {r['expect_wgmma']}"
        for r in rows
        if r["expect_wgmma"] is not None and r["uses_wgmma"] != r["expect_wgmma"]
    ]
    assert not wrong, "\n".join(wrong)


def test_shipped_configs_do_not_spill(rows):
    spilling = [
        f"{r['case']} {r['config']}: {r['n_spills']} words spilled, {r['n_regs']} registers"
        for r in rows
        if r["n_spills"] > r["max_spills"]
    ]
    assert not spilling, "prune these configs (flash_attention._EXCLUDED):\n" + "\n".join(spilling)
    # Hopper: at most 227 KiB of shared memory per block
    assert max(r["shared_bytes"] for r in rows) <= 227 * 1024


def test_report_covers_every_shipped_attention_config(rows):
    # Asked in a subprocess: importing the kernel module here would import Triton compiled, which
    # interpreted kernels in later test files cannot use.
    code = (
        "import json, torch\n"
        "from scigpt.kernels import flash_attention as fa\n"
        "dt = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}\n"
        "print(json.dumps({f'{k} {n} {d}': [fa.config_key(c) for c in fa.shipped_configs(k, t, d)]"
        " for k in fa.CONFIGS for n, t in dt.items() for d in fa.SUPPORTED_HEAD_DIMS}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shipped = json.loads(proc.stdout)

    seen: dict[str, list] = {}
    for r in rows:
        if r["case"].startswith("attn_") and r.get("kind") in ("fwd", "dkdv", "dq"):
            cfg = r["config"]
            block = [v for k, v in cfg.items() if k.startswith("BLOCK_")]
            key = [*block, cfg["num_warps"], cfg["num_stages"]]
            seen.setdefault(f"{r['kind']} {r['dtype']} {r['head_dim']}", []).append(key)
    assert {name.split()[0] for name in seen} == {"fwd", "dkdv", "dq"}
    for name, keys in seen.items():
        assert keys == shipped[name], name
    # every candidate of each kernel is compiled for some dtype and head dim
    for kind in ("fwd", "dkdv", "dq"):
        for names in (("fp16", "bf16"), ("fp32",)):  # 16-bit types share configs
            prefixes = tuple(f"{kind} {n} " for n in names)
            every = {tuple(k) for s, v in shipped.items() if s.startswith(prefixes) for k in v}
            compiled = {tuple(k) for s, v in seen.items() if s.startswith(prefixes) for k in v}
            assert every <= compiled, (kind, names, every - compiled)


def test_report_refuses_interpreted_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET is set"):
        aot.report(AOT_MODULES)
