"""``python -m plasticity_core.runs --config exp.yaml [...]`` is ``plasticity finetune --config exp.yaml [...]``.

``worker FOLDER...`` is the internal entry of the background process ``start_run`` launches (not a user command).
"""
from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        from plasticity_core.runs.executors import _worker

        return _worker(args[1:])
    from plasticity_core import cli

    return cli.main(["finetune", *args])


if __name__ == "__main__":
    sys.exit(main())
