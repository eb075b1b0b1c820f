"""Every hook in gate/hookspecs.py says when it is called, is fully typed, is shown to plugin
authors and is exercised by a test (as datasette's tests/test_docs.py does for its hooks).

The hooks are read from the module, so a hook added later is checked without anyone listing
it here.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from functools import cache
from pathlib import Path

import pytest

from gate import hookspecs
from gate.plugins import make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

HOOKS = {
    name: fn
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "gate_spec")
}


def test_the_hooks_plugins_rely_on_are_all_there():
    """Hooks only grow: none of these may go. The plugin manager knows every one."""
    assert set(HOOKS) >= {
        "register_detectors",
        "register_encoders",
        "register_matchers",
        "register_actuators",
        "register_commands",
        "access_decided",
        "access_policy",
        "presentation_attack",
    }
    pm = make_plugin_manager(entry_points=False)
    assert {name for name in HOOKS if getattr(pm.hook, name).spec is not None} == set(HOOKS)


def _docstring(name: str) -> str:
    """The hook's docstring and those of the hooks it refers to (``Same rules as :func:`x```)."""
    doc = inspect.getdoc(HOOKS[name]) or ""
    referred = [other for other in re.findall(r":func:`(\w+)`", doc) if other in HOOKS]
    return "\n".join([doc, *(inspect.getdoc(HOOKS[other]) or "" for other in referred)])


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_docstring_says_when_it_is_called(name):
    doc = inspect.getdoc(HOOKS[name])
    assert doc, f"{name} has no docstring"
    assert "Called" in _docstring(name), f"{name}: the docstring must say when it is Called"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_docstring_says_what_an_answer_does(name):
    fn, doc = HOOKS[name], inspect.getdoc(HOOKS[name]) or ""
    if inspect.signature(fn).return_annotation != "None":
        assert re.search(r"\breturns?\b", doc, re.IGNORECASE), f"{name}: say what it returns"
    if fn.gate_spec.get("firstresult"):
        assert "first" in doc.lower(), f"{name}: say that the first answer wins"


@cache
def _annotation_namespace() -> dict:
    """hookspecs' globals plus what it imports only for type checkers."""
    namespace = dict(vars(hookspecs))
    tree = ast.parse(inspect.getsource(hookspecs))
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            exec(compile(ast.Module(node.body, []), hookspecs.__file__, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_fully_typed(name):
    signature = inspect.signature(HOOKS[name])
    untyped = [p.name for p in signature.parameters.values() if p.annotation is p.empty]
    assert untyped == [], f"{name}: arguments without a type: {untyped}"
    assert signature.return_annotation is not signature.empty, f"{name}: no return type"
    hints = typing.get_type_hints(HOOKS[name], globalns=_annotation_namespace())
    assert set(hints) == {*signature.parameters, "return"}  # and every hint names a real type


@cache
def _user_docs() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_for_plugin_authors(name):
    assert re.search(rf"\b{name}\b", _user_docs()), f"{name} is in neither README.md nor docs/"


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl"
    )


@cache
def _exercised() -> dict[str, set[str]]:
    """Per hook, the test files that implement it with ``@hookimpl`` or call ``*.hook.<name>``."""
    found: dict[str, set[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(map(_is_hookimpl, node.decorator_list)):
                found.setdefault(node.name, set()).add(path.name)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "hook"
            ):
                found.setdefault(node.attr, set()).add(path.name)
    return found


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_exercised_by_a_test(name):
    assert _exercised().get(name), f"no test implements {name} with @hookimpl or calls it"
