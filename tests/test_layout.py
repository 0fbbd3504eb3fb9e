"""The import arrows of the design: cli -> pipeline -> teacher, student, distill; teacher -> student
(model and run loading only), distill; student -> distill; distill -> nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("cli", "pipeline", "teacher", "student", "distill")
ALLOWED = {
    "cli": {"pipeline", "teacher", "student", "distill"},
    "pipeline": {"pipeline", "teacher", "student", "distill"},
    "teacher": {"teacher", "student", "distill"},
    "student": {"student", "distill"},
    "distill": {"distill"},
}
# What the teacher may use of the student: the model, its config and loading a run; never its training.
TEACHER_MAY_IMPORT = {"student.sasrec", "student.config", "student.run"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in OURS}


def sources() -> list[tuple[str, Path]]:
    files = [("cli", ROOT / "cli.py")]
    for package in OURS[1:]:
        files += [(package, path) for path in sorted((ROOT / package).glob("*.py"))]
    return files


def test_imports_point_one_way():
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package, path in sources()
        for name in imports(path)
        if name.split(".")[0] not in ALLOWED[package]
        or (package == "teacher" and name.startswith("student") and name not in TEACHER_MAY_IMPORT)
    ]
    assert not wrong, wrong
