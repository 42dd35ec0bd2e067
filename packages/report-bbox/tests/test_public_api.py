"""The public surface is ``report_bbox`` itself; the library prints nothing."""

import ast
from pathlib import Path

import report_bbox

SRC = Path(report_bbox.__file__).parent


def _modules():
    return [(p.name, ast.parse(p.read_text())) for p in sorted(SRC.glob("*.py"))]


def test_every_public_name_is_importable_from_the_package():
    assert len(report_bbox.__all__) == len(set(report_bbox.__all__))
    for name in report_bbox.__all__:
        assert hasattr(report_bbox, name), name
    for name in ("bbox_violation", "benchmark_bboxes", "BenchRow", "TOTALSEG_V1", "TOTALSEG_V2", "V1_TO_V2"):
        assert name in report_bbox.__all__


def test_the_library_never_prints():
    for name, tree in _modules():
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        assert not calls, f"{name} calls print()"


def test_no_module_imports_a_private_name_of_another():
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for alias in node.names:
                    if alias.name.startswith("_"):
                        raise AssertionError(f"{name} imports private {alias.name} from .{node.module}")
