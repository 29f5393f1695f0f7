"""The worker entries the library starts (not meant to be typed): ``python -m plasticity_core.runs serve`` (a
``process`` pool worker executing the run folders it reads from stdin) and ``... launch LAUNCHER FOLDER...`` (the
background launcher of ``start_run``). Any other arguments are ``plasticity finetune``'s, for compatibility.

Nothing imports this module, so it may import the CLI without closing an import loop.
"""
from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        import signal

        from plasticity_core.runs.execute import execute_run
        from plasticity_core.runs.interrupt import AnyStop, ParentWatch, StopOnSignals
        from plasticity_core.runs.store import Run

        # SIGINT (Ctrl-C in the terminal reaches the whole process group) is the launcher's to handle: it writes STOP
        # files; SIGTERM (a service manager stopping the group) stops the run at its next step with its checkpoint,
        # a second SIGTERM ends it at once; a launcher killed outright (SIGKILL) stops it instead of leaving an orphan
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop = AnyStop(StopOnSignals((signal.SIGTERM,), announce=False).__enter__(), ParentWatch())
        assert "streamlit" not in sys.modules, "a run worker must not import streamlit"
        for line in sys.stdin:  # one run folder per line, until the launcher closes stdin
            if line.strip():
                try:
                    execute_run(Run(line.strip()), stop=stop)
                except Exception:  # noqa: BLE001 - one run's folder failing (deleted, disk full) must not end the pool
                    import traceback

                    traceback.print_exc()  # into worker-N.log; the launcher gives that run its final status
        return 0
    if args[:1] == ["launch"] and len(args) >= 3:
        from plasticity_core.runs.executors import _launcher_main

        return _launcher_main(args[1], args[2:])
    from plasticity_core import cli

    return cli.main(["finetune", *args])


if __name__ == "__main__":
    sys.exit(main())
