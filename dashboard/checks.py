"""What a strategy will do to the selected layers, shown where the user looks (Diagnose and Re-init).

One call renders ``plasticity_core.reinit.plan_reinit`` for the current selection: a warning naming every layer
the strategy cannot act on, with the reason and a proposal, a button to switch to a strategy that acts on more
of them, and the per-layer table. Nothing here computes: the plan comes from the library.
"""
from __future__ import annotations

import streamlit as st
from torch import nn

import plasticity_core as pc
from plasticity_core.reinit import strategies_for


def params_for(strategy: str) -> dict:
    """The parameters the session holds for ``strategy`` (from Re-init or a recommendation), else its defaults."""
    return dict(st.session_state.get("strategy_params", {}).get(strategy, {}))


def selection_check(model: nn.Module, strategy: str, include: list[str], exclude: list[str] = (), *, key: str,
                    recommended: str | None = None) -> pc.ReinitPlan | None:
    """Render the plan of ``strategy`` on the selection; returns it (None when the config itself is invalid)."""
    try:
        cfg = pc.ReinitConfig(strategy=strategy, layers=list(include), exclude=list(exclude), params=params_for(strategy))
    except pc.ConfigError as e:
        st.error(str(e))
        return None
    plan = pc.plan_reinit(model, cfg)
    touched = plan.touched
    if recommended and recommended == strategy and plan.skipped:
        st.warning(f"The recommendation chose **{recommended}** for its own layers; your selection differs and "
                   f"{recommended} acts on only {len(touched)} of its {len(plan.table)} layers.")
    problems = plan.problems()
    if problems:
        lines = [f"- {p}" for p in problems]
        lines += [f"- `{layer}`: {why}" for layer, why in list(plan.skipped.items())[:8]]
        if len(plan.skipped) > 8:
            lines.append(f"- … and {len(plan.skipped) - 8} more (table below)")
        (st.error if not touched else st.warning)("\n".join(lines), icon=":material/warning:")
        names = list(plan.table["layer"])
        counts = strategies_for(model, names)
        best = next(iter(counts)) if counts else None
        if best and best != strategy and counts[best] > len(touched):
            if st.button(f"Use {best} instead (acts on {counts[best]} of {len(names)})", key=f"btn_{key}_use_{best}"):
                st.session_state["strategy"] = best
                st.rerun()
    else:
        st.caption(f"**{strategy}** acts on all {len(touched)} selected layers.")
    if len(plan.table):
        st.dataframe(plan.table, hide_index=True, key=f"{key}_plan", width="stretch",
                     column_config={"layer": st.column_config.TextColumn("layer"),
                                    "action": st.column_config.TextColumn("what happens", help="re-init: the strategy acts "
                                                                          "on this layer; skip: it leaves it alone"),
                                    "reason": st.column_config.TextColumn("why not", width="large"),
                                    "proposal": st.column_config.TextColumn("instead", width="large")})
    return plan
