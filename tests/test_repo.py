"""The README agrees with what the repository runs and measured."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELL = re.compile(r"\d+\.\d / \d+\.\d / \d+\.\d")


def test_ci_runs_the_readme_test_command():
    ci_command = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in ln]
    assert len(ci_command) == 1
    assert ci_command[0].strip() in (ROOT / "README.md").read_text()


def _cell_rows(text: str) -> list[list[str]]:
    rows = (line for line in text.splitlines() if line.startswith("|"))
    return [cells for line in rows if len(cells := CELL.findall(line)) == 4]


@pytest.mark.parametrize("readme", ["README.md", "results/cifar10_resnet20/README.md"])
def test_readme_cifar_table_is_the_generated_one(readme):
    # The READMEs copy the study's table by hand (with their own method labels): row by row,
    # their cells must be the ones `rewa study cifar` wrote.
    generated = (ROOT / "results/cifar10_resnet20/results.md").read_text()
    generated_rows = _cell_rows(generated.split("## Selected runs")[0])
    assert len(generated_rows) == 7
    assert _cell_rows((ROOT / readme).read_text()) == generated_rows
