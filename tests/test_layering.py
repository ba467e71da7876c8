"""The product's layering, read from its imports (every import statement, the lazy ones inside
functions included): `rem` <- `runtime` <- `tasks` <- `flows` <- `deployments` / `cli`, with
`blocks` beside `runtime` (Prefect blocks built on `rem`); no module imports one of a higher layer,
no import circle, and the backup layout (archive or incremental) is decided in one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("rem", "blocks", "runtime", "tasks", "flows", "deployments", "cli")
# What each package may import, besides itself.
MAY_IMPORT = {
    "rem": set(),
    "blocks": {"rem"},
    "runtime": {"rem", "blocks"},
    "tasks": {"rem", "runtime"},
    "flows": {"rem", "runtime", "tasks", "blocks"},
    "deployments": {"rem", "runtime", "blocks", "flows"},
    "cli": {"rem", "runtime", "flows", "deployments", "blocks"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The product modules one module imports, anywhere in it (a name imported from a package that
    is itself a module counts as that module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import rem.backup.catalog as c`, `from rem import x`
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_module_imports_a_higher_layer():
    wrong = [f"{name} imports {target}" for name, targets in graph().items() for target in sorted(targets)
             if (mine := name.split(".")[0]) != (theirs := target.split(".")[0]) and theirs not in MAY_IMPORT[mine]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_layout_is_decided_in_one_module():
    """Only rem/backup/layout.py tells an archive from an incremental backup (the incremental
    repository may recognise its own backups); nothing else reads metadata.layout to branch on it
    or asks a stored result's type."""
    allowed = {"rem.backup.layout", "rem.backup.incremental"}
    deciding = re.compile(r"\.layout\s*(==|!=|in\b)|==\s*\"(incremental|archive)\"|isinstance\([^)]*Stats\)")
    found = [f"{name}:{n}: {line.strip()}" for name, path in modules().items() if name not in allowed
             for n, line in enumerate(path.read_text().splitlines(), 1) if deciding.search(line)]
    assert not found, "layout decided outside rem/backup/layout.py:\n" + "\n".join(found)


def test_the_checks_see_the_imports_they_judge():
    """The graph the tests above judge is the real one: a module known to import lazily (restore's
    stores, imported inside a function) and one known to import at the top are both in it."""
    edges = graph()
    assert "runtime.wiring" in edges["tasks.restore"]  # inside download(): the lazy import counts
    assert "rem.backup.layout" in edges["flows.restore"]
    assert "rem.backup.catalog" in edges["rem.backup.layout"]
