"""Each compiled kernel module and its pure-Python twin export the same names, and their
classes the same public methods and attributes with the same signatures.

What is compared: ``__all__``; for every exported class, its public names (methods,
properties, ``__slots__``, and on the pure side the ``self.x = ...`` attributes its methods
set, which the compiled side declares as ``cdef public``/``readonly``); parameter names, kinds
and defaults of every method and function (annotations are not compared: Cython keeps C types,
not the pure twin's hints); constructors, whose compiled signature Cython only embeds in the
class docstring (``embedsignature``) or, for a ``__cinit__``, only its ``.pyx`` holds; module
constants by value, sentinels by type and repr. What cannot be compared: a compiled ``cdef``
method (invisible from Python), the types of compiled attributes, and a constructor that is
a generic ``__cinit__(*args, **kwargs)``.
"""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
from importlib.resources import files
from types import ModuleType
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from gameguard import _impl

from conftest import both_twins

Param = Tuple[str, str, Optional[str]]  # name, kind, default (repr) or None


def exported(module: ModuleType) -> List[str]:
    names = getattr(module, "__all__", None)
    assert names is not None, f"{module.__name__} has no __all__"
    return sorted(names)


def pure_instance_attributes(cls: type) -> Set[str]:
    """Public attributes the methods of a pure class (or of its bases) assign on ``self``."""
    names: Set[str] = set()
    for klass in cls.__mro__[:-1]:
        try:
            names |= assigned_on_self(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            pass
    return names


def assigned_on_self(source: str) -> Set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        targets: List[Any] = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for t in ast.walk(target):
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                        and t.value.id == "self" and not t.attr.startswith("_")):
                    names.add(t.attr)
    return names


def public_names(cls: type, pure: bool) -> Set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    if pure:
        names |= pure_instance_attributes(cls)
    return names


def params(sig: inspect.Signature) -> List[Param]:
    return [(p.name, p.kind.name, None if p.default is p.empty else repr(p.default))
            for p in sig.parameters.values()]


def split_params(text: str) -> List[Param]:
    """Parameters of a Cython parameter list (C types allowed), e.g.
    ``double window, int buckets=10, *, clock=None``."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    out: List[Param] = []
    kind = "POSITIONAL_OR_KEYWORD"
    for part in (" ".join(p.split()) for p in parts):
        if part == "*":
            kind = "KEYWORD_ONLY"
            continue
        if part == "/":
            out = [(n, "POSITIONAL_ONLY", d) for n, _, d in out]
            continue
        decl, _, default = part.partition("=")
        name = decl.split()[-1]
        if name.startswith("**"):
            out.append((name[2:], "VAR_KEYWORD", None))
        elif name.startswith("*"):
            out.append((name[1:], "VAR_POSITIONAL", None))
            kind = "KEYWORD_ONLY"
        elif name != "self":
            out.append((name, kind, default.strip() or None))
    return out


def compiled_constructor(cls: type) -> Optional[List[Param]]:
    """A compiled class's constructor parameters, read from the shipped ``.pyx`` (its
    ``__init__``, else its ``__cinit__``), else from the signature Cython embeds in the class
    docstring (``Window(double window, int buckets=10)``; Cython 3 misplaces a ``*`` there
    when keyword-only parameters have defaults, so the source comes first). None where
    neither says (a generic ``*args, **kwargs``)."""
    module = cls.__module__.rsplit(".", 1)[-1]
    pyx = files("gameguard") / "_fast" / f"{module}.pyx"
    if pyx.is_file():
        body = re.split(r"^cdef class (\w+)", pyx.read_text(), flags=re.M)
        classes = dict(zip(body[1::2], body[2::2]))
        for method in ("__init__", "__cinit__"):
            found = re.search(rf"def {method}\(([^)]*)\)", classes.get(cls.__name__, ""))
            if found:
                parsed = split_params(found.group(1))
                if parsed and parsed[0][1] != "VAR_POSITIONAL":
                    return parsed
    first = (cls.__doc__ or "").split("\n", 1)[0].rstrip()
    if first.startswith(f"{cls.__name__}(") and first.endswith(")"):
        return split_params(first[len(cls.__name__) + 1:-1])
    return None


def same_default(fast: Optional[str], pure: Optional[str]) -> bool:
    if fast is None or pure is None:
        return fast is pure
    try:
        return bool(ast.literal_eval(fast) == ast.literal_eval(pure))
    except (ValueError, SyntaxError):
        return fast == pure


def signature_mismatch(fast: List[Param], pure: List[Param]) -> Optional[str]:
    if [(n, k) for n, k, _ in fast] != [(n, k) for n, k, _ in pure] or not all(
            same_default(f[2], p[2]) for f, p in zip(fast, pure)):
        return f"fast {fast} != pure {pure}"
    return None


def signature_of(obj: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def is_method(cls: type, attr: str) -> bool:
    """A method, as opposed to data (a property, a slot, a ``cdef`` attribute or an instance
    attribute of a pure class, which the class itself does not hold)."""
    static = inspect.getattr_static(cls, attr, None)
    return static is not None and not inspect.isdatadescriptor(static) and callable(
        getattr(cls, attr))


def class_mismatches(name: str, fast: type, pure: type) -> List[str]:
    problems = []
    fast_names, pure_names = public_names(fast, pure=False), public_names(pure, pure=True)
    if fast_names - pure_names:
        problems.append(f"{name}: only the compiled class has {sorted(fast_names - pure_names)}")
    if pure_names - fast_names:
        problems.append(f"{name}: only the pure class has {sorted(pure_names - fast_names)}")
    sig, compiled = signature_of(pure), compiled_constructor(fast)
    if sig is not None and compiled is not None:
        bad = signature_mismatch(compiled, params(sig))
        if bad:
            problems.append(f"{name}(): {bad}")
    for attr in sorted(fast_names & pure_names):
        f, p = is_method(fast, attr), is_method(pure, attr)
        if f != p:
            problems.append(f"{name}.{attr}: a method on one side only")
            continue
        if not f:
            continue
        fs, ps = signature_of(getattr(fast, attr)), signature_of(getattr(pure, attr))
        if fs is not None and ps is not None:
            bad = signature_mismatch(params(fs), params(ps))
            if bad:
                problems.append(f"{name}.{attr}: {bad}")
    return problems


def module_mismatches(fast: ModuleType, pure: ModuleType) -> List[str]:
    problems = []
    fast_all, pure_all = exported(fast), exported(pure)
    if fast_all != pure_all:
        problems.append(f"__all__: only compiled {sorted(set(fast_all) - set(pure_all))}, "
                        f"only pure {sorted(set(pure_all) - set(fast_all))}")
    for name in sorted(set(fast_all) & set(pure_all)):
        f, p = getattr(fast, name), getattr(pure, name)
        if inspect.isclass(f) != inspect.isclass(p):
            problems.append(f"{name}: a class on one side only")
        elif inspect.isclass(p):
            problems.extend(class_mismatches(name, f, p))
        elif callable(p) or callable(f):
            fs, ps = signature_of(f), signature_of(p)
            if callable(f) != callable(p):
                problems.append(f"{name}: callable on one side only")
            elif fs is not None and ps is not None:
                bad = signature_mismatch(params(fs), params(ps))
                if bad:
                    problems.append(f"{name}: {bad}")
        elif f != p and not (repr(f) == repr(p) and type(f).__name__ == type(p).__name__):
            problems.append(f"{name}: compiled {f!r} != pure {p!r}")
    return problems


@pytest.mark.parametrize("name", _impl.KERNEL_MODULES)
def test_twins_export_the_same_api(name: str) -> None:
    fast, pure = both_twins(name)
    problems = module_mismatches(fast, pure)
    assert not problems, f"gameguard._fast.{name} vs _pure.{name}:\n  " + "\n  ".join(problems)


def test_every_pure_kernel_has_a_compiled_source() -> None:
    """KERNEL_MODULES is read from _pure/: each needs a .pyx (or a .pxd-augmented twin)."""
    fast_dir = files("gameguard") / "_fast"
    missing = [n for n in _impl.KERNEL_MODULES
               if not (fast_dir / f"{n}.pyx").is_file() and not (fast_dir / f"{n}.pxd").is_file()]
    assert not missing


# -- the comparison itself catches what it must ------------------------------------------------
def test_parser_reads_cython_embedded_signatures() -> None:
    class Window:
        """Window(double window, int buckets=10, *, clock=None, **extra)

        doc"""
    assert compiled_constructor(Window) == [
        ("window", "POSITIONAL_OR_KEYWORD", None), ("buckets", "POSITIONAL_OR_KEYWORD", "10"),
        ("clock", "KEYWORD_ONLY", "None"), ("extra", "VAR_KEYWORD", None)]


def test_mismatches_are_reported() -> None:
    class Fast:
        """Kernel(double rate, int capacity=2)"""
        __name__ = "Kernel"

        def take(self, now: float, cost: int = 1) -> bool:
            return True

        def extra(self) -> None:
            pass

    class Pure:
        def __init__(self, rate: float, capacity: int = 1) -> None:
            self.rate = rate

        def take(self, now: float, cost: int = 2) -> bool:
            return True

    Fast.__name__ = "Kernel"
    problems: Dict[str, bool] = {p.split(":")[0]: True for p in
                                 class_mismatches("Kernel", Fast, Pure)}
    assert set(problems) == {"Kernel", "Kernel()", "Kernel.take"}
