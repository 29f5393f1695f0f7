"""The Streamlit dashboard of Plasticity Lab: ``streamlit run dashboard/app.py``. All computation is in plasticity_core."""
