"""The Streamlit dashboard of Plasticity Lab: ``streamlit run dashboard/app.py`` from a checkout, ``plasticity dashboard``
anywhere (the wheel ships this folder as ``plasticity_core.dashboard``). All computation is in plasticity_core."""
