"""The README's five-line example, run as written against the test host (its address and
the token file swapped for the test's), and the same lines in the repository's README."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from conftest import REPO, Host


def example(readme: Path) -> str:
    text = readme.read_text()
    m = re.search(r"<!-- example:begin -->\n```python\n(.*?)```\n<!-- example:end -->", text, re.S)
    assert m, f"{readme}: no example block"
    return m.group(1)


def test_the_readme_example_runs(host: Host, tmp_path: Path) -> None:
    code = example(REPO / "clients/python/README.md")
    assert len(code.strip().splitlines()) == 5, code
    assert example(REPO / "README.md") == code, "README.md and clients/python/README.md differ"
    (tmp_path / ".sandboxer/tokens").mkdir(parents=True)
    (tmp_path / ".sandboxer/tokens/local.token").write_text(host.tokens["a"] + "\n")
    assert "http://127.0.0.1:7733" in code
    code = code.replace("http://127.0.0.1:7733", host.base_url)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "42", out.stdout
    m = re.fullmatch(r"([0-9.]+) USD charged; ([0-9.]+) USD left", lines[1])
    assert m, out.stdout
    assert Decimal(m.group(1)) > 0 and Decimal(m.group(2)) > Decimal("9")
