"""The package's shape: one-way layers, one door to the transport, a stable public surface.

The rules are checked on the source (parsed, never imported), so a broken rule fails here
with the file and line that broke it. Each rule is also run against a small package written
to a temporary folder with that rule broken, so a checker that stopped seeing violations
would fail too.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import kkorthanc

pytestmark = pytest.mark.no_cassette

PACKAGE = Path(kkorthanc.__file__).resolve().parent

#: Layers from the bottom up: a module may import modules of its own layer or below. A name
#: covers a module and, for a subpackage, everything in it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "tags", "synthetic"),
    ("values", "_transport", "_limits", "_answers", "_paging"),
    ("server",),
    ("_base", "metadata"),
    ("models",),
    ("query", "display", "frames", "jobs"),
    ("modalities", "transfer", "forest"),
    ("client",),
    ("__init__", "sandbox", "postgres"),
    ("cluster",),
    ("cli",),
)

#: Deliberate upward imports: one-line delegations from a method to the module that owns the
#: operation, imported inside the method. (importer, imported)
DELEGATIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("models", "jobs"),  # Resource.delete / anonymize / modify
        ("models", "transfer"),  # Resource.download_archive, Instance.save
        ("models", "display"),  # Resource._repr_html_
    }
)

#: The transport: the only modules that may import requests or urllib3.
TRANSPORT = frozenset({"_transport", "_limits"})
#: The only modules that may import the transport or reach into a ``_transport`` attribute.
TRANSPORT_USERS = TRANSPORT | {"server"}
HTTP_LIBRARIES = frozenset({"requests", "urllib3"})
MAX_LINES = 900

#: The public surface: changing it is a decision, made here on purpose.
PUBLIC = [
    "AmbiguousIdentifier",
    "BadRequest",
    "Conflict",
    "EchoFailed",
    "ExportFailed",
    "ExportReport",
    "FindAnswer",
    "FindFailed",
    "Forbidden",
    "ForestStoreError",
    "Instance",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobTimeout",
    "Modality",
    "ModalityError",
    "NoResultingResource",
    "NotFound",
    "NotInForest",
    "OrderBy",
    "Orthanc",
    "OrthancConnectionError",
    "OrthancError",
    "OrthancHTTPError",
    "OrthancTimeout",
    "PaddedIdentifier",
    "Patient",
    "PatientForest",
    "PersonName",
    "QueryError",
    "Resource",
    "SandboxError",
    "Series",
    "Server",
    "ServerError",
    "StoreFailed",
    "StoreReport",
    "Study",
    "SystemInfo",
    "TransferFailed",
    "Unauthorized",
    "UnknownKeyword",
    "UnknownModality",
    "UnsupportedByServer",
    "UpdateReport",
    "UploadFailed",
    "UploadItem",
    "UploadReport",
    "ValidationFailed",
    "__version__",
    "build_patient_forest",
    "orthanc_id",
]


# -- reading the source -------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One run-time import of a module of the package."""

    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function: runs when called, not when the importer loads


def module_name(root: Path, path: Path) -> str:
    """``forest.build`` for ``<root>/forest/build.py``, ``forest`` for its ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield module_name(root, path), path, ast.parse(path.read_text("utf-8"), str(path))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node that runs, with whether it runs only when a function is called."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other, in_function
                yield from _runtime_nodes(other, in_function)
            continue
        lazy = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        yield child, in_function
        yield from _runtime_nodes(child, lazy)


def _package_of(name: str, path: Path) -> str:
    """The package a relative import inside module ``name`` starts from."""
    parts = name.split(".") if name != "__init__" else []
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def imports(root: Path) -> Iterator[Import]:
    """The run-time imports between the package's modules (``TYPE_CHECKING`` blocks aside)."""
    names = {name for name, _, _ in modules(root)}
    for name, path, tree in modules(root):
        for node, lazy in _runtime_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = _package_of(name, path).split(".") if _package_of(name, path) else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:
                    full = f"{stem}.{alias.name}" if stem else alias.name
                    targets.append(full if full in names else stem or "__init__")
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == root.name or node.module.startswith(root.name + "."):
                    stem = node.module[len(root.name) + 1 :] or "__init__"
                    for alias in node.names:
                        full = f"{stem}.{alias.name}" if stem != "__init__" else alias.name
                        targets.append(full if full in names else stem)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(root.name + "."):
                        targets.append(alias.name[len(root.name) + 1 :])
            for target in targets:
                if target != name:
                    yield Import(name, target, getattr(node, "lineno", 0), lazy)


def third_party_imports(tree: ast.Module) -> Iterator[tuple[str, int]]:
    for node, _ in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def layer_of(name: str) -> int:
    top = name.split(".")[0]
    for number, layer in enumerate(LAYERS):
        if top in layer:
            return number
    raise AssertionError(f"module {name} is in no layer of LAYERS: place it")


# -- the rules ----------------------------------------------------------------------------------


def upward_imports(root: Path) -> list[str]:
    found = []
    for imp in imports(root):
        pair = (imp.importer.split(".")[0], imp.imported.split(".")[0])
        if layer_of(imp.imported) > layer_of(imp.importer) and pair not in DELEGATIONS:
            found.append(f"{imp.importer}:{imp.line} imports {imp.imported} from a higher layer")
        elif pair in DELEGATIONS and not imp.lazy:
            found.append(f"{imp.importer}:{imp.line} imports {imp.imported} at load time")
    return found


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of modules in the run-time graph (delegations aside)."""
    graph: dict[str, set[str]] = {name: set() for name, _, _ in modules(root)}
    for imp in imports(root):
        pair = (imp.importer.split(".")[0], imp.imported.split(".")[0])
        if pair not in DELEGATIONS and imp.imported in graph:
            graph[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def transport_reach_throughs(root: Path) -> list[str]:
    found = []
    for name, _, tree in modules(root):
        if name.split(".")[0] in TRANSPORT_USERS:
            continue
        for node, _ in _runtime_nodes(tree):
            if isinstance(node, ast.Attribute) and node.attr == "_transport":
                found.append(f"{name}:{node.lineno} reaches into ._transport")
    for imp in imports(root):
        if imp.imported == "_transport" and imp.importer.split(".")[0] not in TRANSPORT_USERS:
            found.append(f"{imp.importer}:{imp.line} imports the transport")
    for name, _, tree in modules(root):
        if name in TRANSPORT:
            continue
        for module, line in third_party_imports(tree):
            if module in HTTP_LIBRARIES:
                found.append(f"{name}:{line} imports {module}")
    return found


def long_modules(root: Path) -> list[str]:
    return [
        f"{name}: {lines} lines"
        for name, path, _ in modules(root)
        if (lines := len(path.read_text("utf-8").splitlines())) > MAX_LINES
    ]


def stray_exceptions(root: Path) -> list[str]:
    """Public exception classes defined outside ``errors``.

    A private one (``_FeedGap``) is control flow inside its module and never reaches a user.
    """
    found = []
    for name, _, tree in modules(root):
        if name == "errors":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    found.append(f"{name}:{node.lineno} defines exception {node.name}")
    return found


# -- on the package itself ----------------------------------------------------------------------

#: exceptions that never leave their module (turned into exit codes or retries inside it)
PRIVATE_EXCEPTIONS: dict[str, set[str]] = {}


def test_no_upward_imports() -> None:
    assert upward_imports(PACKAGE) == []


def test_no_import_cycles() -> None:
    assert cycles(PACKAGE) == []


def test_only_the_server_reaches_the_transport() -> None:
    assert transport_reach_throughs(PACKAGE) == []


def test_no_module_over_the_limit() -> None:
    assert long_modules(PACKAGE) == []


def test_exceptions_live_in_errors() -> None:
    allowed = {
        f"{module}:{line}"
        for module, names in PRIVATE_EXCEPTIONS.items()
        for line in _class_lines(PACKAGE, module, names)
    }
    found = [
        entry
        for entry in stray_exceptions(PACKAGE)
        if entry.rsplit(" defines", 1)[0] not in allowed
    ]
    assert found == []


def _class_lines(root: Path, module: str, names: set[str]) -> Iterator[int]:
    for name, _, tree in modules(root):
        if name == module:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name in names:
                    yield node.lineno


def test_public_surface() -> None:
    assert kkorthanc.__all__ == PUBLIC
    errors = kkorthanc.errors
    raised = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    ]
    assert [name for name in raised if name not in PUBLIC] == []


# -- the rules see what they should -------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "kkorthanc"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), "utf-8")
    return root


def test_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "from .client import Orthanc\n",
            "errors.py": "class OrthancError(Exception): ...\n",
            "_transport.py": "import requests\n",
            "server.py": "from ._transport import Transport\n",
            "models.py": "from .forest import build\n\ndef f():\n    from . import jobs\n",
            "jobs.py": "from .models import Resource\n",
            "client.py": "from .server import Server\n",
            "forest/__init__.py": "from .build import build\n",
            "forest/build.py": (
                "import requests\nfrom ..models import Resource\n\n"
                "class Broken(ValueError): ...\n\ndef g(client):\n    client._transport.get()\n"
            ),
            "transfer/__init__.py": "from .upload import upload\n",
            "transfer/upload.py": "from .. import _transport\n" + "x = 1\n" * MAX_LINES,
        },
    )
    assert upward_imports(root) == ["models:1 imports forest.build from a higher layer"]
    assert cycles(root) == [["forest.build", "models"]]
    assert transport_reach_throughs(root) == [
        "forest.build:7 reaches into ._transport",
        "transfer.upload:1 imports the transport",
        "forest.build:1 imports requests",
    ]
    assert long_modules(root) == [f"transfer.upload: {MAX_LINES + 1} lines"]
    assert stray_exceptions(root) == ["forest.build:4 defines exception Broken"]


def test_a_delegation_must_stay_lazy(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "models.py": "from . import jobs\n",
            "jobs.py": "x = 1\n",
        },
    )
    assert upward_imports(root) == ["models:1 imports jobs at load time"]
