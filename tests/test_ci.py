"""CI runs the README's test command, verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Tests (what `.ci/run` runs", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    last = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()][-1].strip()
    assert last == block
    assert "slurm-up.sh" in block and "TAO_REQUIRE_SLURM=1" in block
