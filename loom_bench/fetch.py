"""``python -m loom_bench.fetch``: B6's Java side from Maven Central, once per change of its pom.

Runs ``mvn -q -B -f loom_bench/connect/pom.xml package``, which puts Kafka Connect's worker classpath into
``.cache/connect/libs`` and Debezium's JDBC sink plugin into ``.cache/connect/plugins``. ``scripts/bench.sh``
and B6's integration test call it; a stamp named after the pom's hash skips it while nothing changed.
Fails (:class:`FetchError`) when Java or Maven is missing or Maven cannot resolve the artifacts.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from loom_bench.launch import CONNECT_DIR, ROOT

POM = ROOT / "loom_bench" / "connect" / "pom.xml"


class FetchError(RuntimeError):
    """B6's jars could not be fetched: the message says what to install or check."""


def ensure(connect_dir: Path = CONNECT_DIR) -> Path:
    """Fetch into ``connect_dir`` unless its stamp matches the pom; returns ``connect_dir``."""
    stamp = connect_dir / f".fetched-{hashlib.sha256(POM.read_bytes()).hexdigest()[:16]}"
    if stamp.is_file():
        return connect_dir
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise FetchError(f"B6 (Kafka Connect) needs {' and '.join(missing)} on PATH: install Java 17 and Maven")
    for old in ("libs", "plugins", "build"):  # build/ holds the unpack markers: without it, no re-unpack
        shutil.rmtree(connect_dir / old, ignore_errors=True)
    done = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), f"-Dconnect.dir={connect_dir.resolve()}", "package"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise FetchError(f"mvn could not fetch B6's artifacts (see {POM}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    for old_stamp in connect_dir.glob(".fetched-*"):
        old_stamp.unlink()
    stamp.touch()
    return connect_dir


def main() -> int:
    try:
        found = ensure()
    except FetchError as exc:
        sys.stderr.write(f"loom_bench.fetch: {exc}\n")
        return 1
    sys.stderr.write(f"loom_bench.fetch: {found} ready\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
