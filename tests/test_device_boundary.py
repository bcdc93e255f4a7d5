"""`torch.cuda` and `torch.npu` may appear only inside workbench/device/: every other module asks the device layer."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"\btorch\s*\.\s*(cuda|npu)\b|\bfrom\s+torch\s+import\s+[^\n]*\b(cuda|npu)\b|import\s+torch_npu\b")


def offending_lines(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[:2] == ("workbench", "device"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{rel}:{number}: {line.strip()}")
    return hits


def test_no_backend_specific_calls_outside_the_device_layer():
    hits = offending_lines(REPO / "workbench")
    assert not hits, "use workbench.device instead of:\n" + "\n".join(hits)


def test_the_check_catches_a_violation(tmp_path, monkeypatch):
    module = tmp_path / "workbench" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("import torch\nx = torch.cuda.is_available()\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert offending_lines(tmp_path / "workbench") == ["workbench/bad.py:2: x = torch.cuda.is_available()"]
