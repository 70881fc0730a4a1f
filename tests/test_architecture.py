"""The import structure: one direction, no cycles.

Every `import` of a uvim_keras module is counted, including those inside
functions. Files import each other without cycles, and the packages follow
`LAYERS`: a package imports only packages of its own or a lower layer.
The one upward edge kept on purpose is none: the models' `from_preset`
façade imports `presets`, which sits below `models` and finds model classes
through Keras registration (`runtime.registration`).
"""

import ast

from common import REPO

PACKAGE = REPO / "uvim_keras"

#: Lowest first. A package may import its own layer's and lower layers' packages.
LAYERS = (
    ("runtime",),
    ("layers", "tasks", "metrics", "visualize", "training"),
    ("checkpoints",),
    ("optimizers", "presets"),
    ("models",),
    ("data",),
    ("keras_hub_models", "evaluate", "code_diagnostics"),
    ("cli",),
)


def _module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path, modules):
    """The uvim_keras modules a file imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` mod.
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [s for s in subs if s in modules]
            if len(names) < len(subs):
                names.append(node.module)
        else:
            continue
        for name in names:
            if name in modules and name != "uvim_keras":
                found.add(name)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _package(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycle(graph):
    """One cycle of `graph` as a list of nodes, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_cycle_between_files():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_packages_import_downwards():
    layer = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}
    graph = _graph()
    top_level = {m for m in graph if m.count(".") == 1 and _package(m) not in layer}
    assert not top_level - {"uvim_keras.__main__"}, (
        f"modules outside the layered packages: {sorted(top_level)}; add them to LAYERS")
    upward = []
    for module, imported in graph.items():
        src = _package(module)
        if src not in layer:
            continue
        for target in imported:
            dst = _package(target)
            if dst in layer and layer[dst] > layer[src]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run upwards:\n" + "\n".join(sorted(upward))


def test_no_cycle_between_packages():
    graph = {}
    for module, imported in _graph().items():
        src = _package(module)
        if src is None:
            continue
        graph.setdefault(src, set()).update(
            _package(t) for t in imported if _package(t) != src)
    cycle = _cycle(graph)
    assert cycle is None, "packages import each other: " + " -> ".join(map(str, cycle))
