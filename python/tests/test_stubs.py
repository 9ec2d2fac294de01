"""The type stubs ``python/nflow/_nflow.pyi`` against the compiled module ``nflow._nflow``: every function,
class, method, property and variable the module exports is declared in the stubs and every declaration there
exists in the module, of the same kind (function, static method, method, property) with the same parameter
names and defaults. The stubs are read with ``ast``, so nothing in them is imported or run."""

import ast
import inspect
import pathlib

import pytest

from nflow import _nflow

STUB = pathlib.Path(__file__).resolve().parents[1] / "nflow" / "_nflow.pyi"


def _dunder(name):
    return name.startswith("__") and name.endswith("__")


def _stub_kind(fn):
    """A stub ``def``'s kind from its decorators."""
    for d in fn.decorator_list:
        if isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod", "property"):
            return d.id
    return "method"


def _stub_params(fn, kind):
    """``[(name, has_default, default)]`` of a stub ``def`` (``self`` / ``cls`` left out)."""
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    out = [(p.arg, d is not None, ast.literal_eval(d) if d is not None else None) for p, d in zip(pos, defaults)]
    if a.vararg:
        out.append(("*" + a.vararg.arg, False, None))
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((p.arg, d is not None, ast.literal_eval(d) if d is not None else None))
    if a.kwarg:
        out.append(("**" + a.kwarg.arg, False, None))
    if kind in ("method", "classmethod", "property"):
        out = out[1:]
    return out


def _runtime_params(obj, bound):
    """``[(name, has_default, default)]`` from the compiled function's text signature (``self`` left out)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    out = []
    for p in sig.parameters.values():
        name = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        has = p.default is not p.empty
        out.append((name, has, p.default if has else None))
    if bound and out and out[0][0] in ("self", "$self"):
        out = out[1:]
    return out


def _stub():
    """Module-level functions, classes (their members) and variables the stubs declare."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    functions, classes, variables = {}, {}, set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            members = {}
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members[m.name] = m
                elif isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name):
                    members[m.target.id] = m
            classes[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            variables.add(node.target.id)
        elif isinstance(node, ast.Assign):
            variables.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return functions, classes, variables


def _runtime():
    """Module-level functions, classes and variables the compiled module exports (its ``__all__``, which
    pyo3 keeps, and every public name)."""
    names = set(getattr(_nflow, "__all__", ())) | {n for n in dir(_nflow) if not n.startswith("_")}
    functions, classes, variables = {}, {}, set()
    for n in names:
        obj = getattr(_nflow, n)
        if isinstance(obj, type):
            classes[n] = obj
        elif callable(obj):
            functions[n] = obj
        else:
            variables.add(n)
    return functions, classes, variables


def _runtime_kind(cls, name):
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, staticmethod):
        return "staticmethod"
    if isinstance(raw, classmethod):
        return "classmethod"
    if inspect.isdatadescriptor(raw):
        return "property"
    return "method"


def _differences():
    s_fun, s_cls, s_var = _stub()
    r_fun, r_cls, r_var = _runtime()
    diff = []

    def names(what, stub, runtime):
        for n in sorted(set(runtime) - set(stub)):
            diff.append(f"{what}{n}: exported by the module, not declared in the stubs")
        for n in sorted(set(stub) - set(runtime)):
            diff.append(f"{what}{n}: declared in the stubs, not exported by the module")

    names("function ", s_fun, r_fun)
    names("class ", s_cls, r_cls)
    names("variable ", s_var, r_var)
    for n in sorted(set(s_fun) & set(r_fun)):
        want, got = _stub_params(s_fun[n], "function"), _runtime_params(r_fun[n], bound=False)
        if got is not None and want != got:
            diff.append(f"function {n}: stub parameters {want}, module {got}")
    for c in sorted(set(s_cls) & set(r_cls)):
        cls, stub = r_cls[c], s_cls[c]
        members = {n for n in vars(cls) if not _dunder(n)}
        declared = {n for n in stub if not _dunder(n)}
        names(f"{c}.", {n: 1 for n in declared}, {n: 1 for n in members})
        for n in sorted(members & declared):
            node, kind = stub[n], _runtime_kind(cls, n)
            s_kind = _stub_kind(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else "property"
            if s_kind != kind:
                diff.append(f"{c}.{n}: a {s_kind} in the stubs, a {kind} in the module")
                continue
            if kind == "property":
                continue
            want = _stub_params(node, kind)
            got = _runtime_params(getattr(cls, n), bound=kind != "staticmethod")
            if got is not None and want != got:
                diff.append(f"{c}.{n}: stub parameters {want}, module {got}")
    return diff


def test_stub_file_parses():
    assert STUB.exists(), STUB
    ast.parse(STUB.read_text(), filename=str(STUB))


def test_stubs_match_the_module():
    diff = _differences()
    assert not diff, "python/nflow/_nflow.pyi differs from nflow._nflow:\n" + "\n".join(diff)


def test_the_check_sees_the_module():
    """The comparison is not vacuous: the module's functions, the Model class and its methods are found."""
    r_fun, r_cls, r_var = _runtime()
    assert {"set_num_threads", "architecture", "target_log_prob"} <= set(r_fun)
    assert "Model" in r_cls and "__version__" in r_var
    assert _runtime_kind(r_cls["Model"], "fit") == "staticmethod"
    assert _runtime_kind(r_cls["Model"], "log_prob") == "method"
    assert _runtime_kind(r_cls["Model"], "dim") == "property"
    params = _runtime_params(r_cls["Model"].sample, bound=True)
    if params is None:
        pytest.skip("this Python gives no text signatures for builtin methods")
    assert [p[0] for p in params] == ["n", "seed", "context", "temperature"]
