"""Tables of numbers as the pages show them: every float column to 4 significant digits.

Streamlit's default cell format rounds to a fixed number of decimals: a dead layer's 1.66e-11 norm showed as
0.00000000001 (or was cut off in a narrow column) and a diverged layer's 3.03e51 dfi as unformatted text.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

FORMAT = "%.4g"


def show(df: pd.DataFrame, key: str, **kwargs: Any) -> None:
    """``st.dataframe`` of ``df`` with its float columns as ``FORMAT`` (``kwargs``' ``column_config`` wins)."""
    config = {c: st.column_config.NumberColumn(str(c), format=FORMAT)
              for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    config.update(kwargs.pop("column_config", None) or {})
    st.dataframe(df, key=key, column_config=config, **kwargs)
