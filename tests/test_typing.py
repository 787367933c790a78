"""The package type-checks with mypy, and a user's checker sees the public API's hints."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # mypy takes ~20 s without its cache


def _mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # The checkout on mypy's path: an editable install's import hook is invisible to it.
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MYPYPATH": str(ROOT)})


def test_the_package_type_checks():
    checked = _mypy("--config-file", str(ROOT / "pyproject.toml"))  # [tool.mypy]: packages = tuning
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_users_script_is_checked_against_the_public_api(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(textwrap.dedent("""
        import tuning

        study = tuning.minimize("recipe.py", max_evals=5, stop=tuning.StopRules(early_stop=3),
                                limits=tuning.Limits(seconds=60), cluster=tuning.Cluster(2))
        best = study.best
        loss: float | None = best.loss if best is not None else None
        tuning.minimize("recipe.py", max_evals="five")
        tuning.minimize("recipe.py", stop=tuning.Limits(seconds=60))
    """))
    checked = _mypy("--ignore-missing-imports", "--cache-dir", str(tmp_path / "cache"), str(script),
                    cwd=tmp_path)
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    # Exactly the two wrong calls, on their lines: the right ones pass, so the hints are seen.
    assert [line.split(":")[1] for line in errors] == ["8", "9"], checked.stdout + checked.stderr
    assert '"max_evals"' in errors[0] and '"stop"' in errors[1]
