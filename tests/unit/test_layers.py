"""The package's layering, read from its import graph. Each sub-package is a wing, by where
its code runs; every import of a spark_vllm module (at the top, inside a function, or
under TYPE_CHECKING) goes to a module of the same layer or one below; the graph has no
circle; a module imports its own package inside a function only where a start-up cost is
kept out on purpose (listed below, with why); and what a Spark task imports stays the
task's side, without the cluster's dependencies."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spark_vllm.request.fields import RESULT_COLUMNS
from spark_vllm.request.kinds import KINDS, LOGPROBS, TRUNCATED

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "spark_vllm"

# Lowest first. A module may import its own layer and the layers below it. A sub-package's
# modules are its layer; the package's own modules are placed by name.
LAYERS = ["common", "request", "spec", "task", "storage", "driver", "cluster", "command"]
TOP_LEVEL = {
    "errors": "common",
    "redact": "common",
    # `__version__`, and the public names, each imported from its module on first use
    "__init__": "common",
    "spec": "spec",
    "cli": "command",
}
# What a Spark task imports (the runner and what it reaches): never these layers.
NOT_IN_A_TASK = {"storage", "driver", "cluster", "command"}
# Imports of the package's own modules inside a function, each for a start-up cost kept
# out: the CLI's verbs import what they run when they run (see cli's docstring); the spec's
# checks need no Spark, so structured's Spark types load only with a json_schema.
LAZY = {"cli": None, "spec": {"request.structured"}}


def _modules() -> dict[str, Path]:
    """Every module of the package by its name below spark_vllm ("request.kinds", "errors",
    "__init__"; a sub-package's own __init__ is "request.__init__")."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found[".".join(path.relative_to(PACKAGE).with_suffix("").parts)] = path
    return found


def _layer(module: str) -> str:
    wing, _, name = module.rpartition(".")
    return wing if wing else TOP_LEVEL[name]


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, set[str]]]:
    """(module -> {imported module: line}, module -> modules it imports below its top level)."""
    modules = _modules()
    known = set(modules) | {"__init__"}
    edges: dict[str, dict[str, int]] = {}
    nested: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in tree.body}
        edges[module], nested[module] = {}, set()
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found = set()
            for name in names:
                if name == "spark_vllm":
                    found.add("__init__")
                elif name.startswith("spark_vllm."):
                    below = name.removeprefix("spark_vllm.")
                    if below in known:
                        found.add(below)
                    elif below + ".__init__" in known:
                        found.add(below + ".__init__")
            # `from spark_vllm.task import runner` imports the module runner, not the wing's
            # __init__ (nor the package's)
            if any(not name.endswith("__init__") for name in found):
                found = {name for name in found if not name.endswith("__init__")}
            found.discard(module)
            for target in found:
                edges[module].setdefault(target, node.lineno)
                if id(node) not in top:
                    nested[module].add(target)
    return edges, nested


def _circle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One circle of the graph (its modules in order), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in edges.get(module, {}):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        state[module] = 2
        stack.pop()
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_every_module_has_a_layer() -> None:
    layers = {module: _layer(module) for module in _modules()}
    assert set(layers.values()) <= set(LAYERS), layers


def test_no_import_goes_up_a_layer() -> None:
    edges, _ = _graph()
    against = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)}), line {line}"
        for module, targets in edges.items()
        for target, line in targets.items()
        if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))
    ]
    assert against == []


def test_the_import_graph_has_no_circle() -> None:
    edges, _ = _graph()
    assert _circle(edges) is None


def test_the_circle_finder_finds_one() -> None:
    assert _circle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None


def test_the_package_is_imported_inside_functions_only_where_said() -> None:
    _, nested = _graph()
    lazy = {module: targets for module, targets in nested.items() if targets}
    assert set(lazy) <= set(LAZY), lazy
    for module, allowed in LAZY.items():
        assert allowed is None or lazy.get(module, set()) <= allowed, (module, lazy.get(module))


def _imported_by(statement: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{statement}; import sys; print('\\n'.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_a_task_imports_the_task_side_only() -> None:
    """The runner (what a pickled task imports on an executor) reaches none of the
    storage, driver, cluster or command modules, nor the cluster's dependencies."""
    loaded = _imported_by("import spark_vllm.task.runner")
    ours = {
        name.removeprefix("spark_vllm.")
        for name in loaded
        if name.startswith("spark_vllm.") and name.removeprefix("spark_vllm.") in _modules()
    }
    assert "task.runner" in ours
    beyond = {module for module in ours if _layer(module) in NOT_IN_A_TASK}
    assert beyond == set()
    assert {"kubernetes", "fastapi", "uvicorn"} & loaded == set()


def test_a_task_without_structured_output_does_not_import_jsonschema() -> None:
    """jsonschema and referencing cost each Spark task's Python worker about 0.15 s before
    its first request; only a structured answer needs them, so they load when it is used."""
    loaded = _imported_by("import spark_vllm.task.runner")
    assert {"jsonschema", "referencing"} & loaded == set()
    parsing = _imported_by(
        "import pyarrow as pa; from spark_vllm.request.structured import AnswerParser; "
        "AnswerParser({'type': 'object'}, pa.struct([])).parse('{}')"
    )
    assert {"jsonschema", "referencing"} <= parsing


def test_import_spark_vllm_and_its_spec_load_no_spark_and_no_cluster_client() -> None:
    loaded = _imported_by("import spark_vllm, spark_vllm.spec")
    assert {"pyspark", "kubernetes", "fastapi", "uvicorn"} & loaded == set()


def test_the_result_columns_the_spec_checks_are_the_kinds_fields() -> None:
    """request.fields.RESULT_COLUMNS (kept input columns may not take these names) states
    what the
    kinds define: a kind's new column must be added there too."""
    fields = {f.name for kind in KINDS.values() for f in kind.fields}
    assert fields | {LOGPROBS.name, TRUNCATED.name} == RESULT_COLUMNS


_TRIGGER = ["trigger", "--release", "r", "-n", "jobs", "--values", "v.yaml", "--token-file", "t"]


@pytest.mark.parametrize(
    ("argv", "blocked", "named"),
    [
        (["status", "some-job", "-n", "jobs"], "kubernetes", "kubernetes"),
        (["list", "-n", "jobs"], "kubernetes", "kubernetes"),
        (_TRIGGER, "fastapi", "fastapi"),
        (_TRIGGER, "uvicorn", "uvicorn"),
    ],
)
def test_a_kubernetes_verb_without_the_k8s_extra_says_how_to_install_it(
    argv: list[str], blocked: str, named: str
) -> None:
    """kubernetes, fastapi and uvicorn are the `k8s` extra, not core dependencies: a
    Python without them (blocked here in sys.modules) gets exit code 2 and the command."""
    program = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from spark_vllm.cli import main\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert f"spark-vllm {argv[0]}: needs {named}," in done.stderr
    assert "pip install 'spark-vllm[k8s]'" in done.stderr


def test_the_cluster_clients_are_the_k8s_extra_not_core_dependencies() -> None:
    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[=<>\[]", dep)[0] for dep in project["dependencies"]}
    extra = {re.split(r"[=<>\[]", dep)[0] for dep in project["optional-dependencies"]["k8s"]}
    assert extra == {"kubernetes", "fastapi", "uvicorn"}
    assert names & extra == set()
