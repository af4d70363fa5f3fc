"""CI runs what the README tells a user to run: `.ci/run`'s command is the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    """The one-line bash block after the README's 'Run the tests' sentence."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Run the tests[^\n]*\n\n```bash\n([^\n]+)\n```", readme)
    assert block, "README lost its 'Run the tests' command block"
    return block.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    """The last line of .ci/run is exactly the README's command, and it runs the suite on 2 xdist workers."""
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == readme_test_command()
    assert "python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder" in lines[-1]
