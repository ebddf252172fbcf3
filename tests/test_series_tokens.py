"""The Chronos-style tokenizer equals the ``chronos-forecasting`` package's MeanScaleUniformBins.

The reference runs in a subprocess whose working directory is outside the checkout: the
repository's top-level ``kernels/`` package would shadow Hugging Face's ``kernels`` that
transformers (chronos's dependency) imports. Exact equality (token ids are integers; scales and
decoded values to float32 bitwise, both sides compute them in float32 from the same inputs).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from scigpt.models.series_tokens import EOS_ID, PAD_ID, BinSettings, MeanScaleUniformBins

REFERENCE = r"""
import sys
import numpy as np
import torch
from chronos.chronos import ChronosConfig, MeanScaleUniformBins

data = np.load(sys.argv[1])
out = {}
for eos in (False, True):
    cfg = ChronosConfig(
        tokenizer_class="MeanScaleUniformBins", tokenizer_kwargs={"low_limit": -15.0,
        "high_limit": 15.0}, context_length=int(data["context"].shape[-1]),
        prediction_length=int(data["label"].shape[-1]), n_tokens=4096, n_special_tokens=2,
        pad_token_id=0, eos_token_id=1, use_eos_token=eos, model_type="seq2seq",
        num_samples=1, temperature=1.0, top_k=50, top_p=1.0,
    )
    tok = cfg.create_tokenizer()
    ids, mask, scale = tok.context_input_transform(torch.from_numpy(data["context"]))
    lab, lmask = tok.label_input_transform(torch.from_numpy(data["label"]), scale)
    dec = tok.output_transform(lab[:, None, : data["label"].shape[-1]], scale)
    out.update({f"ids{int(eos)}": ids.numpy(), f"mask{int(eos)}": mask.numpy(),
                f"scale{int(eos)}": scale.numpy(), f"lab{int(eos)}": lab.numpy(),
                f"lmask{int(eos)}": lmask.numpy(), f"dec{int(eos)}": dec[:, 0].numpy()})
np.savez(sys.argv[2], **out)
"""


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(26)
    n, c, h = 7, 64, 12
    context = (rng.lognormal(1.0, 1.2, (n, c)) * rng.choice([-1, 1], (n, c))).astype(np.float32)
    label = (rng.lognormal(1.0, 1.5, (n, h)) * 3).astype(np.float32)
    context[1] = 0.0  # an all-zero context: scale 1
    context[2, ::5] = np.nan  # missing values → PAD, left out of the scale
    label[2, 3] = np.nan
    context[3] = np.nan  # all missing: scale 1, every token PAD
    context[4, :] = 1e-3  # a tiny level: scaled values near 1
    label[4] = [1e6, -1e6, 0, 1e-3, 15e-3, -15e-3, 16e-3, 0.5e-3, np.nan, 2e-3, 3e-3, 4e-3]
    label[5, :] = context[5, -1]  # persistence
    context[6] = np.tile([1.0, -1.0], c // 2)  # scale exactly 1 ...
    centres = np.linspace(-15, 15, 4096 - 3, dtype=np.float32)
    label[6] = ((centres[1:] + centres[:-1]) / 2)[::341][:h]  # ... and values on bin edges
    return context, label


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("chronos")
    context, label = _inputs()
    np.savez(tmp / "in.npz", context=context, label=label)
    (tmp / "ref.py").write_text(REFERENCE)
    # cwd outside the checkout (see the module docstring); the package must be installed (dev
    # extra): a missing chronos fails here, it is not skipped
    subprocess.run([sys.executable, "ref.py", "in.npz", "out.npz"], cwd=tmp, check=True,
                   timeout=600)  # fmt: skip
    return dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("eos", [False, True])
def test_tokens_equal_chronos(reference: dict[str, np.ndarray], eos: bool) -> None:
    context, label = _inputs()
    tok = MeanScaleUniformBins(BinSettings(n_tokens=4096, low=-15.0, high=15.0))
    ids, mask, scale = tok.context_tokens(torch.from_numpy(context), eos=eos)
    lab, lmask = tok.label_tokens(torch.from_numpy(label), scale, eos=eos)
    k = str(int(eos))
    np.testing.assert_array_equal(ids.numpy(), reference["ids" + k])
    np.testing.assert_array_equal(mask.numpy(), reference["mask" + k])
    np.testing.assert_array_equal(scale.numpy(), reference["scale" + k])
    np.testing.assert_array_equal(lab.numpy(), reference["lab" + k])
    np.testing.assert_array_equal(lmask.numpy(), reference["lmask" + k])
    dec = tok.decode(lab[:, : label.shape[1]], scale)
    np.testing.assert_array_equal(dec.numpy(), reference["dec" + k])
    # the cases the inputs were built for actually happened
    assert scale[1] == 1 and scale[3] == 1
    assert (ids[3, :64] == PAD_ID).all() and (ids[2, :64:5] == PAD_ID).all()
    assert (ids[:, -1] == EOS_ID).all() == eos
    assert ids.max() == 4095 or lab.max() == 4095  # the clamp at the top bin was exercised


def test_no_look_ahead() -> None:
    """The horizon does not change the scale or the context's tokens."""
    tok = MeanScaleUniformBins(BinSettings(n_tokens=64, low=-4, high=4))
    context = torch.tensor([[1.0, 2.0, 3.0, 2.0]])
    ids, _, scale = tok.context_tokens(context)
    assert float(scale) == pytest.approx(2.0)
    for future in (torch.tensor([[100.0]]), torch.tensor([[-5.0]])):
        again, _, s2 = tok.context_tokens(context)
        assert torch.equal(again, ids) and torch.equal(s2, scale)
        lab, _ = tok.label_tokens(future, scale)
        # decoded horizon: the nearest centre, clipped to the range ×scale
        assert float(tok.decode(lab, scale)) == pytest.approx(
            float(np.clip(float(future) / 2.0, -4, 4)) * 2.0, abs=8 / 61 * 2
        )


def test_settings_refused() -> None:
    with pytest.raises(ValueError, match="n_tokens"):
        BinSettings(n_tokens=3)
    with pytest.raises(ValueError, match="low"):
        BinSettings(low=1, high=-1)
