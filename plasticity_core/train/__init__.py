"""Training: the run contract (``events``: event vocabulary, ``RunWriter``, ``EventReader``, ``run_progress``).

Submodules are imported by name; this package imports nothing, so reading a run folder never loads torch.
"""
