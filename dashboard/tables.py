"""Tables of numbers as the pages show them: every float column to 4 significant digits.

Streamlit's default cell format rounds to a fixed number of decimals: a dead layer's 1.66e-11 norm showed as
0.00000000001 (or was cut off in a narrow column). A column holding a diverged layer's values (1e9 and more) is
scientific; the browser leaves a value above ~1e21 unformatted, with all its digits, in any format.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

FORMAT = "%.4g"
LARGE, LARGE_FORMAT = 1e9, "%.4e"  # a column holding a value this large: scientific (%g wrote 2.2e13 as 22260000000000)


def show(df: pd.DataFrame, key: str, **kwargs: Any) -> None:
    """``st.dataframe`` of ``df`` with its float columns as ``FORMAT``, or ``LARGE_FORMAT`` for a column holding a
    value of ``LARGE`` or more (``kwargs``' ``column_config`` wins)."""
    config = {c: st.column_config.NumberColumn(str(c), format=LARGE_FORMAT if df[c].abs().max() >= LARGE else FORMAT)
              for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    config.update(kwargs.pop("column_config", None) or {})
    st.dataframe(df, key=key, column_config=config, **kwargs)
