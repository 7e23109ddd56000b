"""The systems under test, one module each, every one run by the harness as its own process.

Each module is a small program (``python -m loom_bench.systems.<name>``) that ends by printing one
``BENCH-RESULT {json}`` line with what only the process itself can know (B0's client-side timing, B2's
message count). Standard library only in this file: B3's module runs under the separate bench venv.
"""

from __future__ import annotations

import json
import sys
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "


def report_result(result: dict[str, Any]) -> None:
    """Print the process's result line for the harness."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def parse_result(output: str) -> dict[str, Any]:
    """The last result line in a process's output, or an empty dict."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            found: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return found
    return {}
