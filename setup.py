"""What pyproject.toml cannot say: the top-level ``dashboard/`` folder ships inside the package as
``plasticity_core.dashboard`` (so ``pip install plasticity-lab`` can run ``plasticity dashboard``), while the
checkout keeps ``streamlit run dashboard/app.py``. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["plasticity_core", "plasticity_core.*"])
    + ["plasticity_core.dashboard", "plasticity_core.dashboard.app_pages"],
    package_dir={"plasticity_core.dashboard": "dashboard"},
)
