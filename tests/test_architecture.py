"""The import rules of docs/architecture.md, read from the source."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "genplane"
FOUNDATION = {"clock", "collector", "ids", "logs", "mediatypes", "settings"}
FRAMEWORK_FREE = {"contract", "net"}


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "genplane" and len(parts) > 1 else None


def _imports() -> dict[str, set[str]]:
    """Package -> the genplane packages or foundation modules its files import (at any depth)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if len(rel.parts) == 1:
            continue  # a foundation module
        package = rel.parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                target = _package_of(name)
                if target is not None and target != package:
                    graph[package].add(target)
    return graph


def _documented() -> dict[str, set[str]]:
    """Package -> what docs/architecture.md's table lets it import (foundation modules aside)."""
    doc = (SRC.parent.parent / "docs" / "architecture.md").read_text()
    allowed: dict[str, set[str]] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[a-z_]+`", cells[0]):
            continue
        package = cells[0].strip("`")
        named = set(re.findall(r"`([a-z_]+)`", cells[2]))
        if cells[2].startswith("every package"):
            named = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
            named -= {package, *named.intersection(re.findall(r"but `([a-z_]+)`", cells[2]))}
        allowed[package] = named
    return allowed


def test_every_package_imports_only_what_the_architecture_page_allows() -> None:
    allowed = _documented()
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(allowed) == packages, "every package has a row in docs/architecture.md"
    extra = {p: sorted(t - FOUNDATION - allowed[p]) for p, t in _imports().items()}
    assert {p: t for p, t in extra.items() if t} == {}


def test_only_the_cli_imports_the_api_and_nothing_imports_the_cli() -> None:
    graph = _imports()
    offenders = {p: sorted(t & {"api", "cli"}) for p, t in graph.items() if p not in ("api", "cli")}
    assert {p: t for p, t in offenders.items() if t} == {}
    assert "cli" not in graph.get("api", set())


def test_contract_and_net_import_no_domain_package() -> None:
    graph = _imports()
    for package in FRAMEWORK_FREE:
        assert graph.get(package, set()) <= FRAMEWORK_FREE | (FOUNDATION - {"settings"}), package


def test_no_cycle_among_packages() -> None:
    graph = {p: t - FOUNDATION for p, t in _imports().items()}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, set())):
            if nxt in path:
                cycles.append([*path[path.index(nxt):], nxt])
            elif len(path) < len(graph) + 1:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_only_the_lifecycle_writes_generations() -> None:
    writes = re.compile(r"\b(update|insert|delete)\(Generation\)|\bGeneration\(|s\.add\(gen\b")
    writers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if writes.search(path.read_text()) and path.name != "models.py"
    )
    assert writers == ["generations/lifecycle.py"]
