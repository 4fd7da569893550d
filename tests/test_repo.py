"""The README's test command is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in ln]
    assert len(ci_command) == 1
    assert ci_command[0].strip() in (ROOT / "README.md").read_text()
