"""``scigpt.tables``: the one table writer and number formatter, against hand-written text.
All cases < 0.1 s."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from scigpt.tables import Table, fmt


@pytest.mark.parametrize(
    ("value", "spec", "want"),
    [
        (None, None, ""),
        (True, None, "true"),
        (np.bool_(False), None, "false"),
        (3, None, "3"),
        (np.int64(12_000_000), None, "1.2e+07"),
        (24.0, None, "24"),
        (0.123456, None, "0.1235"),
        (np.float32(0.5), None, "0.5"),
        (1.5e7, None, "1.5e+07"),
        (math.nan, None, "—"),
        (math.inf, ".3f", "—"),
        (2, ".3e", "2.000e+00"),
        (0.1234567, ".6f", "0.123457"),
        ([1, "a"], None, '[1, "a"]'),
        ("x", ".4f", "x"),
    ],
)
def test_fmt(value, spec, want):
    assert fmt(value, spec) == want


def test_table_csv_markdown_and_text():
    t = Table(["name", "rmse", "n"], specs={"rmse": ".2f"}, right=("n",), none="n/a")
    t.add({"name": "a|b", "rmse": 0.126, "n": 3})
    t.add(["c", None, [1, 2]])
    t.add({"name": "d"})  # missing cells are empty
    assert t.markdown() == (
        "| name | rmse | n |\n|---|---|---:|\n| a\\|b | 0.13 | 3 |\n| c | n/a | [1, 2] |\n"
        "| d | n/a | n/a |"
    )
    text = t.csv()
    assert text == 'name,rmse,n\na|b,0.126,3\nc,,"[1, 2]"\nd,,\n'
    first = next(csv.DictReader(io.StringIO(text)))
    assert first == {"name": "a|b", "rmse": "0.126", "n": "3"}
    assert Table(["a", "bb"], [{"a": 1, "bb": 2.5}]).text([3, 4]) == "  a   bb\n--- ----\n  1  2.5"
    assert Table.of([{"x": 1}, {"y": 2, "x": 3}]).columns == ["x", "y"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        t.add(["too", "short"])
