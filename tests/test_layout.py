"""The package layout is what the README says it is, and `llm/` stays a leaf."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
# what llm/ may import of personaloom: nothing that knows a stage, a run or the CLI
LEAF_OK = (
    "personaloom.llm",
    "personaloom.schemas",
    "personaloom.errors",
    "personaloom.paths",
    "personaloom.text",
)


def _tree_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How the code is shaped") :]
    return section[section.index("```text\n") + 8 : section.index("\n```", section.index("```text"))]


def _described() -> dict[str, str]:
    """Package folder (relative to flows/, "" for the top) -> the README's words about it."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    current = ""
    for line in _tree_block().splitlines():
        m = re.match(r"^( *)(\S+/)\s+(.*)$", line)
        if m and not line.startswith(" " * 20):
            depth, name = len(m.group(1)), m.group(2).rstrip("/")
            stack = [(d, n) for d, n in stack if d < depth]
            current = "" if name == "personaloom" else "/".join([*(n for _, n in stack), name])
            if name != "personaloom":
                stack.append((depth, name))
            out[current] = m.group(3)
        else:
            out[current] += " " + line.strip()
    return out


def test_the_readme_tree_names_every_package_and_module() -> None:
    described = _described()
    packages = {str(p.parent.relative_to(FLOWS)).replace(".", "") for p in FLOWS.rglob("__init__.py")}
    assert set(described) == packages, (sorted(set(described) - packages), sorted(packages - set(described)))
    for package, words in described.items():
        folder = FLOWS / package
        for module in sorted(folder.glob("*.py")):
            if module.stem in ("__init__", "__main__"):
                continue
            assert re.search(rf"\b{module.stem}\b", words), (
                f"README tree: {package or 'top'} omits {module.stem}"
            )


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith("personaloom")}


def test_llm_is_a_leaf() -> None:
    """Every import in llm/ (function-level and TYPE_CHECKING ones too) stays inside the leaf set."""
    for path in sorted((FLOWS / "llm").glob("*.py")):
        outside = sorted(m for m in _imports(path) if not m.startswith(LEAF_OK))
        assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


def _module(path: Path) -> str:
    parts = ["personaloom", *path.relative_to(FLOWS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles() -> None:
    """No module reaches itself through personaloom imports, function-level ones included (a lazy import
    hides a cycle from Python, not from the reader); TYPE_CHECKING-only imports are left out."""
    modules = {_module(p): p for p in FLOWS.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        hidden = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            edges |= {
                o for t in targets if t.startswith("personaloom.") and (o := owner(t)) not in (None, name)
            }
        graph[name] = edges

    def reaches(start: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return False

    assert not [m for m in sorted(graph) if reaches(m)]
