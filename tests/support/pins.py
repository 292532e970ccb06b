"""The version ranges pyproject.toml pins the dependencies to (the fast paths rely on their internals)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def installed_within_pin(package: str, version: str) -> tuple[bool, str]:
    """(whether the installed `version`'s major is inside the pin of `package`, the pin as written)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in dependencies if re.match(rf"{re.escape(package)}\b", d))
    low, high = (int(x) for x in re.findall(r"[<>]=?(\d+)", spec))
    return low <= int(version.split(".")[0]) < high, spec
