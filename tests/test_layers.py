"""The layers point one way: engines/ (the network) ← stream/ (the frames) ← benchmarks/.

The test reads every module's imports, including those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer may import from the project: itself and the layers below it.
ALLOWED = {"engines": {"engines"}, "stream": {"engines", "stream"}, "benchmarks": {"engines", "stream", "benchmarks"}}
BACKENDS = ("torch_backend.py", "onnx_backend.py", "tensorrt_backend.py", "engine_cache.py")


def project_imports(path: Path) -> set[str]:
    """The project modules that a file imports, dotted (`stream.frames`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in ALLOWED}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_a_layer_above_it(layer):
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / layer).rglob("*.py")
        for name in project_imports(path)
        if name.split(".")[0] not in ALLOWED[layer]
    }
    assert not upward


def test_no_backend_imports_the_module_that_picks_backends():
    for name in BACKENDS:
        assert "engines.segmenter" not in project_imports(ROOT / "engines" / name), name


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("def late():\n    from stream.frames import blend\n")
    assert project_imports(module) == {"stream.frames"}
