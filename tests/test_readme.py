"""The README documents every setting, and its walk-through calls only real operations."""

from __future__ import annotations

import re
from pathlib import Path

from genplane.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(GENPLANE_[A-Z0-9_]+)` \|", README, flags=re.MULTILINE))
    declared = {f"GENPLANE_{name.upper()}" for name in Settings.model_fields}
    assert documented == declared


def test_readme_starts_with_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make run" in quick and "make test" in quick
