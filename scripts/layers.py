"""Check the import contracts of pyproject.toml ``[tool.importlinter]``.

The source folders map onto import names through setuptools' package-dir
(``artisync`` = sdk/, ``artisync.protocol`` = protocol/, ``artisync.daemon`` =
daemon/), which import-linter cannot follow, so this copies them into a tree
laid out by import name and runs ``lint-imports`` there.

Usage: python scripts/layers.py [SOURCE_ROOT]   (default: this checkout)
Exit status: lint-imports' own (0 when every contract holds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = {"sdk": "artisync", "protocol": "artisync/protocol", "daemon": "artisync/daemon"}


def build_tree(src: Path, dest: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder, target in PACKAGES.items():
        out = dest / target
        if folder == "sdk":  # only its files: protocol/ and daemon/ are copied on their own
            out.mkdir(parents=True)
            for f in (src / folder).glob("*.py"):
                shutil.copy2(f, out / f.name)
            shutil.copytree(src / folder / "ui", out / "ui", ignore=skip)  # artisync.ui
        else:
            shutil.copytree(src / folder, out, ignore=skip)


def main(argv: list[str]) -> int:
    src = Path(argv[0] if argv else Path(__file__).resolve().parent.parent).resolve()
    lint = Path(sys.executable).parent / "lint-imports"
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(src, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = [str(lint), str(src / "pyproject.toml"), "--no-cache"]
        return subprocess.run(cmd, cwd=tmp, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
