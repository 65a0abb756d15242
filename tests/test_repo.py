"""Repository hygiene: CI runs the README's test command; no machine paths in the code."""
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ci_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    cmds = [l for l in lines if "pytest" in l and not l.lstrip().startswith("#")]
    assert len(cmds) == 1, f".ci/run should run pytest exactly once, found {cmds}"
    return cmds[0].strip()


def test_ci_runs_exactly_the_readme_test_command():
    top = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()[:20]]
    assert _ci_command() in top, "the first lines of README.md must hold the exact command .ci/run runs"


def test_python_version_is_pinned_to_312():
    assert (ROOT / ".python-version").read_text().strip() == "3.12"
    assert 'requires-python = ">=3.12,<3.13"' in (ROOT / "pyproject.toml").read_text()


def test_no_machine_paths_in_tracked_code():
    files = subprocess.run(["git", "ls-files", "*.py", "*.sh", ".ci/*"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    pattern = re.compile(r"""["'](/(work|root|home|tmp|mnt)/[^"']*)["']""")
    offenders = [f"{f}: {m.group(1)}" for f in files for m in pattern.finditer((ROOT / f).read_text())]
    assert not offenders, "machine paths in the repo: " + ", ".join(offenders)
