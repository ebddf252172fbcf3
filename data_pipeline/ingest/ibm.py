"""IBM System/360 hexadecimal floating point (SEG-Y data sample format 1) → IEEE float32.

segyio's own conversion gets unnormalised IBM numbers (leading hexadecimal fraction digit 0,
which SEG-Y writers do produce) wrong by up to a factor 16**k, so the SEG-Y reader decodes
format-1 samples here. Verified bit for bit against ``ibm2ieee`` (Enthought) over all 2**32
words (docs/DESIGN_NOTES.md) and, in the tests, over every sign × exponent × leading-digit
pattern in both byte orders.
"""

from __future__ import annotations

import numpy as np


def ibm_to_float32(words: np.ndarray) -> np.ndarray:
    """IBM System/360 single-precision words (uint32 values) → float32, correctly rounded.

    An IBM single is ``(-1)**s * 0.f * 16**(e - 64)`` with a 7-bit exponent ``e`` and a 24-bit
    fraction ``f`` that need not be normalised (its leading hex digit may be 0). That is
    ``f * 2**(4e - 280)`` exactly, which float64 holds for every word (|exponent| <= 280 and 24
    bits); one cast to float32 then rounds half to even, to subnormals or to ±inf.
    """
    w = np.asarray(words, dtype=np.uint32)
    fraction = (w & np.uint32(0x00FFFFFF)).astype(np.float64)
    exponent = ((w >> np.uint32(24)) & np.uint32(0x7F)).astype(np.int32)
    value = np.ldexp(fraction, 4 * exponent - 280)
    value = np.where(w >> np.uint32(31) == 1, -value, value)  # -0.0 for a negative zero
    with np.errstate(over="ignore"):
        return value.astype(np.float32)
