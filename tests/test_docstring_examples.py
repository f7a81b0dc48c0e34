"""Every public function and class carries a usage example, and states its shapes when tensors pass.

*Public* is what a user imports: each function or class named in the `__all__` of `mechscope` or of
any of its subpackages (found by walking the package, so a new subpackage is covered the day it
appears). Each such docstring must have:

- an example block: a line ending in `Example::`, a blank line, then a code block indented below it
  (mkdocstrings renders it as a code block). The block must parse as Python, and every
  `ms.NAME...` / `mechscope.X.Y` path, every `from mechscope... import NAME` and every attribute of
  a name such an import binds (`dl.build` after `from mechscope import dictionaries as dl`) must
  exist, and be imported by the example: `import mechscope as ms` is taken as read, but it loads
  only `mechscope.core` and `mechscope.models`, so `mechscope.causal.eap` needs an import of
  `mechscope.causal` first;
- when its signature (parameters or return value; for a class, its constructor) mentions `Tensor`:
  a parenthesised shape such as `(batch, pos, d_model)` or `(n,)` in its prose or in a comment of
  its example (code itself does not count: a call `f(a, b)` is not a shape).

The failure message lists every offender with file:line and what is missing.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mechscope

REPO = Path(__file__).resolve().parent.parent

# a parenthesised shape: two or more comma-separated dimensions, or one with a trailing comma;
# a dimension is a name or number, optionally with an arithmetic suffix (n_heads * d_head, pos - 1)
_DIM = r"(?:\w+(?:\s*[-+*/]\s*\w+)*|\.\.\.)"
SHAPE = re.compile(rf"\(\s*{_DIM}(?:\s*,\s*{_DIM})+\s*,?\s*\)|\(\s*{_DIM}\s*,\s*\)")
MARKER = re.compile(r"^(?P<indent>[ \t]*)(?:.*\s)?Example::\s*$")


def public_objects() -> list[tuple[str, object]]:
    """(exported name, object) for every function and class in an `__all__` of the package tree."""

    def fail(name: str) -> None:
        raise ImportError(f"cannot import {name} while listing the public API")

    packages = ["mechscope"] + sorted(m.name for m in pkgutil.walk_packages(mechscope.__path__, "mechscope.", onerror=fail)
                                      if m.ispkg)
    seen: dict[tuple[str, str], tuple[str, object]] = {}
    for package in packages:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            # a re-export of another library's class or function is documented there
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__.split(".")[0] == "mechscope":
                seen.setdefault((obj.__module__, obj.__qualname__), (f"{package}.{name}", obj))
    return sorted(seen.values(), key=lambda item: item[0])


def _blocks(doc: str) -> list[tuple[int, int, str]]:
    """(first line, end line, dedented code) of every `Example::` block of a (cleaned) docstring;
    the code is "" when the marker is not followed by a blank line (not a code block once rendered)."""
    lines = doc.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        depth = len(match["indent"].expandtabs())
        j = i + 1
        if j >= len(lines) or lines[j].strip():
            blocks.append((j, j, ""))
            continue
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > depth):
            j += 1
        blocks.append((i + 1, j, textwrap.dedent("\n".join(lines[i + 1:j])).strip("\n")))
    return blocks


def _resolve(path: list[str]) -> bool:
    """Whether mechscope.<path> exists, importing submodules on the way."""
    obj: object = mechscope
    for part in path:
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif inspect.ismodule(obj):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                return False
        else:
            return False
    return True


def _module_file(name: str) -> Path | None:
    """The source file of module `name` ("mechscope.core" -> mechscope/core/__init__.py), or None."""
    base = REPO.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _module_level(body: list[ast.stmt]):
    """The statements that run at import: the body, and inside module-level if/try blocks."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "handlers", []), getattr(node, "finalbody", [])):
                yield from _module_level([n for h in block for n in (h.body if isinstance(h, ast.ExceptHandler) else [h])])


@functools.cache
def loaded_by_import() -> frozenset[str]:
    """The modules `import mechscope` loads, read from the imports that run at module level (those
    inside functions run later): the subpackages an example may use as `ms.X` without importing them."""
    seen: set[str] = set()
    todo = ["mechscope"]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in seen]
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _module_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "mechscope"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    module = f"{base}.{node.module}" if node.module else base
                elif (node.module or "").split(".")[0] == "mechscope":
                    module = node.module
                else:
                    continue
                todo.append(module)
                todo += [f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}")]
    return frozenset(seen)


def _not_imported(path: list[str], imported: set[str]) -> str | None:
    """The first module on mechscope.<path> that neither `import mechscope` nor the example's own
    imports load (a module counts as imported when the example imports it or a package above it)."""
    obj: object = mechscope
    for part in path:
        obj = getattr(obj, part, None)
        if not inspect.ismodule(obj):
            return None
        name = obj.__name__
        if name not in loaded_by_import() and not any(name == m or name.startswith(m + ".") for m in imported):
            return name
    return None


def _chain(node: ast.Attribute) -> list[str] | None:
    """["ms", "core", "Site"] for ms.core.Site; None when the chain does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def missing_paths(tree: ast.AST) -> list[str]:
    """Every mechscope path an example names that does not exist or that it uses without importing
    it: imports from mechscope, and attribute chains on `ms`, `mechscope` or a name an import in the
    example bound to a part of it."""
    roots: dict[str, list[str]] = {"ms": [], "mechscope": []}
    imported: set[str] = set()
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mechscope":
            base = node.module.split(".")[1:]
            if not _resolve(base):
                missing.append(node.module)
            if base:
                imported.add(node.module)
            for alias in node.names:
                if alias.name != "*" and not _resolve([*base, alias.name]):
                    missing.append(f"{node.module}.{alias.name}")
                roots[alias.asname or alias.name] = [*base, alias.name]
                if inspect.ismodule(getattr(importlib.import_module(node.module), alias.name, None)):
                    imported.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mechscope":
                    if not _resolve(parts[1:]):
                        missing.append(alias.name)
                    if len(parts) > 1:
                        imported.add(alias.name)
                    if alias.asname:
                        roots[alias.asname] = parts[1:]
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:  # the whole chain, once
            chain = _chain(node)
            if not chain or chain[0] not in roots:
                continue
            path = [*roots[chain[0]], *chain[1:]]
            if not _resolve(path):
                missing.append(".".join(chain))
            elif (module := _not_imported(path, imported)) is not None:
                missing.append(f"{'.'.join(chain)} without importing {module}")
    return missing


def _mentions_tensor(obj: object) -> bool:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # a class whose constructor is built in (an exception): no tensors
        return False
    annotations = [p.annotation for p in signature.parameters.values()] + [signature.return_annotation]
    return any("Tensor" in (a if isinstance(a, str) else repr(a)) for a in annotations
               if a is not inspect.Parameter.empty)


def _prose_and_comments(doc: str) -> str:
    """The docstring with the code of its example blocks reduced to their comments."""
    lines = doc.splitlines()
    for start, end, _ in reversed(_blocks(doc)):
        lines[start:end] = [line.split("#", 1)[1] for line in lines[start:end] if "#" in line]
    return "\n".join(lines)


def problems(obj: object) -> list[str]:
    """What the docstring of one public object lacks (empty when it is complete)."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    blocks = [code for _, _, code in _blocks(doc)]
    if not blocks:
        return ["no `Example::` block"]
    found = []
    for block in blocks:
        if not block:
            found.append("`Example::` not followed by a blank line and an indented code block")
            continue
        try:
            tree = ast.parse(block)
        except SyntaxError as err:
            found.append(f"example does not parse: {err.msg} (example line {err.lineno})")
            continue
        found += [f"example names {path}" + ("" if " without importing " in path else ", which does not exist")
                  for path in missing_paths(tree)]
    if _mentions_tensor(obj) and not SHAPE.search(_prose_and_comments(doc)):
        found.append("takes or returns a Tensor but states no shape such as (batch, pos, d_model)")
    return found


def _where(obj: object) -> str:
    obj = inspect.unwrap(obj)  # a decorated function's own file, not the decorator's
    try:
        file = Path(inspect.getsourcefile(obj)).resolve()
        line = inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        return "?"
    return f"{file.relative_to(REPO) if file.is_relative_to(REPO) else file}:{line}"


def test_the_rules_catch_what_they_should():
    def good(x):
        """Add one.

        Shapes: x (batch, d) in, the same out.

        Example::

            y = ms.run(model, "hi").logits       # (batch, pos, vocab)
        """

    def bad(x):
        """No example here; f(a, b) is not a shape."""

    def no_blank(x):
        """Summary.

        Example::
            x = 1
        """

    def broken(x):
        """Summary.

        Example::

            x = (
        """

    def wrong_path(x):
        """Summary.

        Example::

            ms.no_such_function(1)
            from mechscope.core import NotAThing
            from mechscope import causal as c
            c.AblationSpec("zero")
            c.no_such_name
            mechscope.zoo.names()
        """

    def imported_first(x):
        """Summary.

        Example::

            import mechscope.zoo
            mechscope.zoo.names()
            from mechscope.causal import Node
            mechscope.causal.graph_of(model)
            ms.Site.parse("embed")
        """

    def no_shape(x: Tensor) -> Tensor:  # noqa: F821 - the annotation stays a string
        """Summary.

        Example::

            y = f(a, b)
        """

    def shape(x: Tensor) -> Tensor:  # noqa: F821
        """Summary.

        Example::

            y = f(a, b)   # (n,)
        """

    assert problems(good) == []
    assert problems(bad) == ["no `Example::` block"]
    assert "blank line" in problems(no_blank)[0]
    assert "does not parse" in problems(broken)[0]
    assert sorted(problems(wrong_path)) == ["example names c.no_such_name, which does not exist",
                                            "example names mechscope.core.NotAThing, which does not exist",
                                            "example names mechscope.zoo.names without importing mechscope.zoo",
                                            "example names ms.no_such_function, which does not exist"]
    assert problems(imported_first) == []
    assert {"mechscope.core", "mechscope.models"} <= loaded_by_import() and "mechscope.zoo" not in loaded_by_import()
    assert problems(no_shape) == ["takes or returns a Tensor but states no shape such as (batch, pos, d_model)"]
    assert problems(shape) == []
    assert _resolve(["causal", "acdc"]) and _resolve(["Site"]) and not _resolve(["Site", "nope"])


@pytest.mark.slow
def test_the_modules_import_mechscope_loads_are_read_right():
    # the static reading of module-level imports against a fresh interpreter's sys.modules
    code = "import sys, mechscope; print(' '.join(m for m in sys.modules if m.startswith('mechscope')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded_by_import() == frozenset(out.stdout.split())


def test_public_api_is_found():
    names = {name for name, _ in public_objects()}
    assert {"mechscope.run", "mechscope.Site", "mechscope.causal.acdc", "mechscope.zoo.train"} <= names
    assert len(names) > 250  # every subpackage's __all__ is walked, not only the top level


def test_every_public_name_has_an_example_and_its_shapes():
    offenders = []
    for name, obj in public_objects():
        for problem in problems(obj):
            offenders.append(f"{_where(obj)}: {name}: {problem}")
    assert not offenders, f"{len(offenders)} docstring problems:\n" + "\n".join(offenders)
