"""The architecture, checked on the source (AST only: fast, imports nothing of the project).

Layers, top to bottom (a module may import its own layer and the ones below, never above):
    fronts     cli/, siamese_index/service/
    api        siamese_index/__init__.py (the public API)
    features   siamese_index/index/, lifecycle/, duplicates/, demo.py
    models     siamese_index/towers/, training/
    io         siamese_index/imaging/, storage/
    base       siamese_index/types.py, errors.py, config.py, jsonable.py, unionfind.py
and within layers: towers never import training; the facade (index/) never imports lifecycle/ or
duplicates/. The CLI uses the library only through the public API and its result types.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "siamese_index"
CLI = ROOT / "cli"

RANK = {"base": 0, "io": 1, "models": 2, "features": 3, "api": 4, "fronts": 5}
LAYER_OF_SUBPACKAGE = {
    "types": "base",
    "errors": "base",
    "config": "base",
    "jsonable": "base",
    "unionfind": "base",
    "imaging": "io",
    "storage": "io",
    "towers": "models",
    "training": "models",
    "index": "features",
    "lifecycle": "features",
    "duplicates": "features",
    "demo": "features",
    "service": "fronts",
    "cli": "fronts",
    "models": "base",  # package data only (the shipped towers), no code
}
# (importer's subpackage, imported subpackage) pairs that the layer order alone would allow
FORBIDDEN = {
    ("towers", "training"): "towers never import training",
    ("index", "lifecycle"): "the facade never imports the model lifecycle",
    ("index", "duplicates"): "the facade never imports the dedup pipeline",
}
CLI_MAY_IMPORT = {"siamese_index", "siamese_index.types", "siamese_index.errors", "siamese_index.config"}
# Underscore names that are public API by their library's documentation, not private members.
PUBLIC_UNDERSCORE = {
    "_replace",
    "_asdict",
    "_fields",
    "_make",  # namedtuple (and SQLAlchemy's Row)
    "_mapping",  # SQLAlchemy Row
    "_exit",  # os._exit
}
MAX_FUNCTION_LINES = 60
LONG_REASON = "Long because"


def library_files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every Python file of the library and the CLI."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path
    for path in sorted(CLI.rglob("*.py")):
        parts = ("siamese_index", "cli", *path.relative_to(CLI).with_suffix("").parts)
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def parsed() -> Iterator[tuple[str, Path, ast.Module]]:
    for module, path in library_files():
        yield module, path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def subpackage(module: str) -> str | None:
    """'siamese_index.index.facade' -> 'index'; 'siamese_index' -> None (the public API)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer(module: str) -> str:
    sub = subpackage(module)
    return "api" if sub is None else LAYER_OF_SUBPACKAGE[sub]


def imported_modules(module: str, path: Path, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every siamese_index import, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "siamese_index" and all(a.name.startswith("__") for a in node.names):
                continue  # `from siamese_index import __version__`: the package's metadata, not its API
            yield node.lineno, target


def own(name: str) -> bool:
    return name == "siamese_index" or name.startswith("siamese_index.")


def test_every_module_has_a_layer():
    unknown = {subpackage(m) or "" for m, _ in library_files()} - set(LAYER_OF_SUBPACKAGE) - {""}
    assert not unknown, f"give these a layer in tests/test_layout.py: {sorted(unknown)}"


def test_layering():
    problems = []
    for module, path, tree in parsed():
        if module == "siamese_index":
            continue  # the public API re-exports names of every layer (lazily: see its TYPE_CHECKING block)
        here, mine = layer(module), subpackage(module)
        for line, target in imported_modules(module, path, tree):
            if not own(target) or module.startswith("siamese_index.cli"):
                continue  # the CLI has its own, stricter rule below
            theirs = subpackage(target)
            if theirs == mine:
                continue
            if RANK[layer(target)] > RANK[here]:
                problems.append(f"{rel(path)}:{line}: {here} layer imports {target} ({layer(target)} layer)")
            elif (mine, theirs) in FORBIDDEN:
                problems.append(f"{rel(path)}:{line}: imports {target}: {FORBIDDEN[(mine, theirs)]}")
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_the_cli_uses_only_the_public_api():
    problems = []
    for module, path, tree in parsed():
        if not module.startswith("siamese_index.cli"):
            continue
        for line, target in imported_modules(module, path, tree):
            if own(target) and not target.startswith("siamese_index.cli") and target not in CLI_MAY_IMPORT:
                problems.append(f"{rel(path)}:{line}: imports {target}")
    assert not problems, (
        "the CLI imports library code only through siamese_index (and .types, .errors, .config):\n"
        + "\n".join(problems)
    )


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_reaches_into_private_members():
    problems = []
    for _module, path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    if is_private(alias.name):
                        problems.append(f"{rel(path)}:{node.lineno}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in PUBLIC_UNDERSCORE:
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    problems.append(f"{rel(path)}:{node.lineno}: {ast.unparse(node)}")
    assert not problems, "private members used from outside their object or module:\n" + "\n".join(problems)


def test_no_long_functions_without_a_reason():
    problems = []
    for _module, path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                first = node.body[0]
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    length -= (first.end_lineno or first.lineno) - first.lineno + 1  # a docstring is not code
                if length > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                    problems.append(f"{rel(path)}:{node.lineno}: {node.name} is {length} lines")
    assert not problems, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them, or say '{LONG_REASON} ...' in the docstring):\n"
        + "\n".join(problems)
    )


def test_the_library_never_prints_nor_configures_logging():
    configuring = {"basicConfig", "addHandler", "dictConfig", "fileConfig"}
    problems = []
    for module, path, tree in parsed():
        if module.startswith("siamese_index.cli"):
            continue  # the front end prints; that is its job
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "print":
                problems.append(f"{rel(path)}:{node.lineno}: print()")
            elif isinstance(func, ast.Attribute) and func.attr in configuring:
                problems.append(f"{rel(path)}:{node.lineno}: {ast.unparse(func)}()")
    assert not problems, "library code logs through logging.getLogger(__name__) only:\n" + "\n".join(problems)


def test_subpackage_inits_are_light():
    heavy = []
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        body = [n for n in body if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        if body:
            heavy.append(rel(init))
    assert not heavy, f"subpackage __init__.py files hold a docstring only (no eager imports): {heavy}"


def test_every_subpackage_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    code_dirs = {p.parent for p in PACKAGE.rglob("*.py")}
    found = {".".join(d.relative_to(ROOT).parts) for d in code_dirs}
    found |= {"siamese_index.cli." + ".".join(d.relative_to(CLI).parts) for d in {p.parent for p in CLI.rglob("*.py")}}
    found = {name.rstrip(".") for name in found} | {"siamese_index.models"}
    assert found - listed == set(), f"folders with code that the wheel would leave out: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages that do not exist: {sorted(listed - found)}"
    missing_init = sorted(
        rel(d) for d in code_dirs | {p.parent for p in CLI.rglob("*.py")} if not (d / "__init__.py").exists()
    )
    assert not missing_init, f"code folders without __init__.py: {missing_init}"
    assert config["package-dir"] == {"siamese_index.cli": "cli", "siamese_index.models": "models"}


def test_the_import_scanner_sees_what_it_checks():
    """Absolute and relative imports are resolved (a check that cannot fail is no check)."""
    tree = ast.parse("from siamese_index.lifecycle.versions import activate\n")
    targets = [t for _, t in imported_modules("siamese_index.index.facade", PACKAGE / "index" / "facade.py", tree)]
    assert targets == ["siamese_index.lifecycle.versions"]
    assert ("index", subpackage(targets[0])) in FORBIDDEN
    rel_tree = ast.parse("from ..storage.db import Database\nfrom . import output\n")
    assert [
        t for _, t in imported_modules("siamese_index.index.facade", PACKAGE / "index" / "facade.py", rel_tree)
    ] == [
        "siamese_index.storage.db",
        "siamese_index.index",
    ]
    assert is_private("_db") and not is_private("__init__") and not is_private("db")
