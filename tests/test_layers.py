"""No module under classit/ imports one from a layer above its own (docs/architecture.md)."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def layers() -> dict[str, int]:
    """Module prefix -> layer number, from the table in docs/architecture.md."""
    table = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        row = re.match(r"\| (\d+)\. [^|]+\| ([^|]+)\|", line)
        if row:
            for name in re.findall(r"`([\w.]+)`", row.group(2)):
                table[name] = int(row.group(1))
    return table


def layer_of(module: str, table: dict[str, int]) -> int:
    prefixes = [p for p in table if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} is in no layer of docs/architecture.md"
    return table[max(prefixes, key=len)]


def classit_imports(path: Path) -> set[str]:
    """Every classit module the file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("classit.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("classit"):
            # `from classit.evaluate import export` imports the module classit.evaluate.export.
            package = REPO / Path(*node.module.split("."))
            found |= {f"{node.module}.{a.name}" if (package / f"{a.name}.py").exists() else node.module
                      for a in node.names}
    return found


def test_every_import_stays_in_its_layer_or_below():
    table = layers()
    assert len(set(table.values())) == 6
    upward = []
    for path in sorted((REPO / "classit").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module == "classit":
            continue
        own = layer_of(module, table)
        upward += [f"{module} (layer {own}) imports {name} (layer {layer_of(name, table)})"
                   for name in sorted(classit_imports(path)) if layer_of(name, table) > own]
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The check itself: an import inside a function, from a layer above, is found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from classit.sweep.trial import trial_key\n")
    table = layers()
    assert layer_of("classit.sweep.trial", table) > layer_of("classit.results", table)
    assert classit_imports(source) == {"classit.sweep.trial"}
