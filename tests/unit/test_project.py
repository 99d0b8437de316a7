"""Project-level checks: CI runs exactly the README's test command."""

import os
import re

from tests.helpers import REPO


def _readme_commands() -> list[str]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_commands = [c for c in _readme_commands() if "pytest" in c and "venv" in c]
    assert len(test_commands) == 1, test_commands
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_lines = [line.strip() for line in f]
    assert test_commands[0].strip() in ci_lines


def test_readme_main_job_runs_the_demo():
    main = [c for c in _readme_commands() if "tfmeta.demo" in c]
    assert len(main) == 1 and "pip install" in main[0]
