"""The seed ser.cfg (/work/shared/seed/ser.cfg): it parses, and it compiles with the real
modules - or, while some natserver module is still missing, the compiler names the first
missing piece at its exact file:line:col. Expected positions are computed from the seed
text, so the tests follow the modules as they arrive and end up asserting a full compile.
Nothing here opens a database: modules do their I/O in init(), never at load time.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from natserver.errors import CfgError
from natserver.modules import Module, ModuleSpec, Param, find, module_name
from natserver.script import ast, core, load, parse
from natserver.script.regex import compile_ere

SEED = Path("/work/shared/seed/ser.cfg")
pytestmark = pytest.mark.skipif(not SEED.exists(), reason="no seed ser.cfg")

# Words followed by "(" in the seed that are syntax, not functions.
_SYNTAX = {"if", "route"}


def seed_text() -> str:
    return SEED.read_text()


def position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def available(name: str) -> ModuleSpec | None:
    """natserver's module ``name``, or None while it does not exist or cannot be imported."""
    try:
        return find(name)
    except ImportError:
        return None


def loadmodule_paths(text: str) -> list[tuple[str, int]]:
    """(path, offset of its opening quote) of every loadmodule, in order."""
    return [(m.group(1), m.start(1) - 1)
            for m in re.finditer(r'^loadmodule\s+"([^"]*)"', text, re.MULTILINE)]


def test_seed_parses():
    tree = parse(seed_text(), str(SEED))
    kinds = [type(item).__name__ for item in tree.items]
    assert kinds.count("Assign") == 10
    assert kinds.count("LoadModule") == 13
    assert kinds.count("ModParam") == 9
    blocks = [(b.kind, b.number.value) for b in tree.items if isinstance(b, ast.RouteBlock)]
    assert blocks == [(ast.RouteKind.REQUEST, n) for n in range(5)] + [(ast.RouteKind.ONREPLY, 1)]


def test_seed_globals():
    tree = parse(seed_text(), str(SEED))
    values = {i.name: i.value.value for i in tree.items if isinstance(i, ast.Assign)}
    assert values["listen"] == "192.0.2.13"
    assert values["fork"] == 1 and values["dns"] == 0 and values["children"] == 4


def test_seed_compiles_or_names_the_first_missing_module():
    text = seed_text()
    missing = [(path, offset) for path, offset in loadmodule_paths(text)
               if available(module_name(path)) is None]
    if not missing:
        script = load(str(SEED))
        assert all(script.request[n] is not None for n in range(5))
        assert script.onreply[1] is not None
        assert script.config.children == 4 and script.config.listens() == [("192.0.2.13", 5060)]
        return
    path, offset = missing[0]
    with pytest.raises(CfgError) as info:
        load(str(SEED))
    err = info.value
    assert (err.file, err.line, err.col) == (str(SEED), *position(text, offset))
    assert f"module '{module_name(path)}'" in err.message


def stub_finder(text: str):
    """Real modules where they exist; for the others an empty module that takes the
    seed's modparams for it (with the seed's value types) and exports no function."""
    tree = parse(text, str(SEED))
    modparams = [i for i in tree.items if isinstance(i, ast.ModParam)]

    def finder(name: str) -> ModuleSpec | None:
        spec = available(name)
        if spec is not None:
            return spec
        params = {}
        for mp in modparams:
            if compile_ere(f"^({mp.modules.value})$").search(name.encode()):
                kind = int if isinstance(mp.value, ast.Num) else str
                params[mp.name.value] = Param(mp.name.value, kind, kind())
        stub = type(f"Stub_{name}", (Module,), {"NAME": name})
        return ModuleSpec(name, stub, (), params)
    return finder


def provided_functions(text: str) -> set[str]:
    names = {row.name for row in core.FUNCTIONS} | set(core.CONTROL)
    for path, _ in loadmodule_paths(text):
        spec = available(module_name(path))
        if spec is not None:
            names |= {row.name for row in spec.functions}
    return names


def first_unknown_call(text: str) -> tuple[str, int] | None:
    """The first call in the routes whose function no existing module provides."""
    # Blank out comments, keeping offsets (the seed has no '#' inside strings).
    code = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), text)
    routes_start = re.search(r"^route\s*\{", code, re.MULTILINE).start()
    provided = provided_functions(text)
    for m in re.finditer(r"\b([A-Za-z][A-Za-z0-9_]*)\s*\(", code[routes_start:]):
        name = m.group(1)
        if name not in _SYNTAX and name not in provided:
            return name, routes_start + m.start(1)
    return None


def test_seed_functions_of_missing_modules_are_reported_at_their_position():
    text = seed_text()
    unknown = first_unknown_call(text)
    if unknown is None:
        script = load(str(SEED), text=text, finder=stub_finder(text))
        assert script.request[0] is not None
        return
    name, offset = unknown
    with pytest.raises(CfgError) as info:
        load(str(SEED), text=text, finder=stub_finder(text))
    err = info.value
    assert (err.line, err.col, err.message) == (*position(text, offset),
                                                f"unknown function '{name}'")


def test_seed_routes_compile_with_stand_in_functions():
    """With every function of the seed provided (as a stub returning 1), the seed's
    routes compile: what remains to load it is only the modules themselves."""
    text = seed_text()
    code = re.sub(r"#[^\n]*", "", text)
    routes = code[re.search(r"^route\s*\{", code, re.MULTILINE).start():]
    called = {m.group(1) for m in re.finditer(r"\b([A-Za-z][A-Za-z0-9_]*)\s*\(", routes)}
    called -= _SYNTAX | {row.name for row in core.FUNCTIONS}
    from natserver.modules import Function, RouteType

    class Everything(Module):
        NAME = "everything"

        def any_args(self, m, *args):
            return 1

    rows = tuple(Function(name, Everything.any_args, args=(lambda v: v,) * n, routes=RouteType.ANY)
                 for name in sorted(called) for n in range(3))
    base = stub_finder(text)

    def finder(name: str) -> ModuleSpec | None:
        spec = base(name)
        if name == "textops":  # one module carries every function, the others none
            return ModuleSpec(spec.name, spec.cls, rows, spec.params)
        return ModuleSpec(spec.name, spec.cls, (), spec.params)

    script = load(str(SEED), text=text, finder=finder)
    assert [n for n, r in enumerate(script.request) if r] == [0, 1, 2, 3, 4]
    assert script.warnings == []
