"""The layout holds (docs/architecture.md): no import cycle, no import from a lower floor up.

The graph is read with `ast` from every first-party module, imports inside
functions included (a late import is still a dependency: it only hides a cycle
from Python). Each module stands on the floor of its longest prefix in FLOORS;
a module may import its own floor and the ones below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["lib", "audit", "teams", "pool", "builds", "notifications", "generator_site", "scripts", "bench"]

# Lowest first. A module's floor is its longest matching prefix's.
FLOORS: list[tuple[str, list[str]]] = [
    # No models, no app: crypto, references, outbound URLs, egress, errors, request helpers, logs' format.
    ("ground", ["lib"]),
    ("audit", ["audit"]),
    ("apps below builds", ["teams", "pool"]),
    # builds' own ground: no models (engines, Dockerfiles, formats, pure policy, validators models use).
    (
        "builds ground",
        [
            "builds.engine",
            "builds.dockerfiles",
            "builds.provenance.slsa",
            "builds.provenance.sbom",
            "builds.provenance.dsse",
            "builds.provenance.cosign_layout",
            "builds.provenance.verification",
            "builds.registry.client",
            "builds.triggers.rules",
            "builds.triggers.path_filters",
            "builds.triggers.schedules",
            "builds.sources.deploy_keys",
            "builds.jobs.limits",
            "builds.jobs.fair_share",
            "builds.live.frames",
            "builds.live.backpressure",
            "builds.logs.steps",
            "builds.insights.charts",
            "builds.insights.chart_ticks",
            "builds.github.webhook_json",
            "builds.uploads.contexts",
        ],
    ),
    ("builds models", ["builds.models"]),
    ("builds", ["builds"]),
    # Django's and Celery's entry points, and the views: nothing in builds imports them.
    (
        "builds interfaces",
        [
            "builds.admin",
            "builds.api",
            "builds.serializers",
            "builds.urls",
            "builds.pages",
            "builds.badges",
            "builds.seed_api",
            "builds.consumers",
            "builds.routing",
            "builds.tasks",
            "builds.cli",
            "builds.cli_pull",
            "builds.management",
            "builds.insights.pages",
            "builds.github.webhooks",
            "builds.registry.token_server",
            "builds.registry.listing",
            "builds.metrics.ops",
        ],
    ),
    ("apps above builds", ["notifications"]),
    # The composition root and the tools: settings, urls, asgi, celery, serve; the farm's scripts.
    ("composition", ["generator_site", "scripts", "bench"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _known(name: str, known: dict[str, Path]) -> str | None:
    """The first-party module `name` is, or is inside (an attribute of a module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - (node.level - 1)] + ([base] if base else []))
            for alias in node.names:
                found.add(_known(f"{base}.{alias.name}", known) or _known(base, known))
    found.discard(None)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports_of(module, path, known) for module, path in known.items()}


def floor_of(module: str) -> tuple[int, str]:
    best = (-1, "", "")
    for number, (name, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[2]):
                best = (number, name, prefix)
    if best[0] < 0:
        raise AssertionError(f"{module} is on no floor: add its package to FLOORS")
    return best[0], best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_import_from_a_lower_floor_up(graph):
    upward = []
    for module, targets in sorted(graph.items()):
        floor, name = floor_of(module)
        for target in sorted(targets):
            target_floor, target_name = floor_of(target)
            if target_floor > floor:
                upward.append(f"{module} ({name}) imports {target} ({target_name})")
    assert upward == []


def test_every_module_is_on_a_floor(graph):
    for module in graph:
        floor_of(module)


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The two checks can fail: a made-up cycle and a made-up upward arrow are caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor_of("lib.references") < floor_of("builds.jobs.services") < floor_of("generator_site.settings")
