"""The README's two commands and CI stay in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_readme_opens_with_the_two_commands():
    main_job, tests = readme_commands()
    assert main_job.startswith("python -m pip install torch==2.13.0 && ") and main_job.endswith("testbed reproduce")
    assert tests.startswith("python -m pip install torch==2.13.0 && ") and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci
