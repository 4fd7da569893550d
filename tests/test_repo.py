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


MEAN_STD = re.compile(r"-?\d+\.\d+ ± \d+\.\d+")


def _rows_by_label(text: str) -> dict[str, str]:
    """Table rows keyed by their first cell (bold marks dropped)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].replace("**", "")] = " | ".join(cells[1:])
    return rows


@pytest.mark.parametrize(
    "readme, results",
    [
        ("results/study_linear/published/README.md", "results/study_linear/published/results.md"),
        ("results/study_logistic/README.md", "results/study_logistic/results.md"),
    ],
)
def test_readme_regression_numbers_are_the_generated_ones(readme, results):
    """Every mean ± std a README's table quotes for a method is in that method's row of the
    table the study wrote (labels as the study writes them)."""
    generated = _rows_by_label((ROOT / results).read_text())
    quoted = _rows_by_label((ROOT / readme).read_text())
    checked = 0
    for label, cells in quoted.items():
        for number in MEAN_STD.findall(cells):
            assert label in generated, f"{readme}: {label!r} is not a row of {results}"
            assert number in generated[label], f"{readme}: {label}: {number}"
            checked += 1
    assert checked >= 10
