"""The "From Python" snippets (docs/python.md, linked from the README) stay true to the code: every
keyword a snippet passes to a function of the pack exists in that function's signature."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

PYTHON_DOC = Path(__file__).resolve().parent.parent / "docs" / "python.md"


def check_snippet(marker: str, callables: dict) -> None:
    """The one ```python block of docs/python.md containing `marker`: each call of a name in
    `callables` passes only keywords that function takes, and every name is called."""
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", PYTHON_DOC.read_text(), re.S) if marker in block]
    seen = set()
    for node in ast.walk(ast.parse(snippet)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in callables:
                parameters = inspect.signature(callables[name]).parameters
                for keyword in node.keywords:
                    assert keyword.arg in parameters, f"{name}({keyword.arg}=…) is not in the code"
                seen.add(name)
    assert seen == set(callables)
