"""The import contracts of pyproject.toml hold, and the check really fails on a violation.

``scripts/layers.py`` (run by ``scripts/check``) lays the source folders out by import
name and runs import-linter; here it runs on copies of the tree, once clean and once
for each kind of violation the contracts exist to catch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _copy(dest: Path) -> Path:
    for folder in ("sdk", "protocol", "daemon"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "layers.py"), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contracts_hold_on_the_tree() -> None:
    out = _check(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("protocol/_frames.py", "from artisync import _task", "layers"),
        ("daemon/publish.py", "from artisync._client import DaemonClient", "layers"),
        ("daemon/publish.py", "from artisync.protocol._layout import task_key", "private"),
        ("sdk/_session.py", "from artisync.daemon import app", "SDK reaches the daemon"),
        ("sdk/_client.py", "from artisync import _quota", "no import cycles"),
    ],
    ids=["protocol-imports-sdk", "daemon-imports-sdk", "private-module", "sdk-daemon", "cycle"],
)
def test_check_fails_on_a_violation(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = _copy(tmp_path)
    target = root / module
    target.write_text(target.read_text() + f"\n{line}  # deliberate violation\n")
    if contract == "no import cycles":  # close the loop: _quota -> _client -> _quota
        quota = root / "sdk/_quota.py"
        quota.write_text(quota.read_text() + "\nfrom artisync import _client\n")
    out = _check(root)
    assert out.returncode != 0, out.stdout
    broken = [ln for ln in out.stdout.splitlines() if "BROKEN" in ln]
    assert any(contract in ln for ln in broken), out.stdout
