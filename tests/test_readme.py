"""The README's code is what a newcomer copies first: it must run as written."""
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.assets
def test_library_tour_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks("python")[0], "README.md", "exec"), {})
    import plasticity_core as pc

    cfg = pc.ReinitConfig.load(tmp_path / "reinit.yaml")
    assert cfg.layers and cfg.strategy in pc.STRATEGIES


def test_every_python_block_compiles():
    for code in blocks("python"):
        compile(code, "README.md", "exec")


def test_every_cli_line_parses():
    from plasticity_core.cli import build_parser

    lines = [l.split("#")[0].strip() for code in blocks("bash") for l in code.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(l)[1:] for l in lines if l.startswith("plasticity ")]
    assert len(commands) >= 8
    for argv in commands:
        build_parser().parse_args(argv)
