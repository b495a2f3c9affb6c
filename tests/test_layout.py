"""The README's layout section names every module of the package, so it stays true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p for p in (ROOT / "trio_ws").iterdir() if (p / "__init__.py").exists())


@pytest.mark.parametrize("package", PACKAGES, ids=lambda path: path.name)
def test_the_readme_layout_names_every_module_of_each_package(package: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = re.search(rf"^\| `trio_ws/{package.name}/` \|(.*)$", readme, re.MULTILINE)
    assert row is not None, f"the layout has no row for trio_ws/{package.name}/"
    modules = {path.name for path in package.glob("*.py")} - {"__init__.py"}
    missing = sorted(name for name in modules if f"`{name}`" not in row.group(1))
    assert missing == []
