"""``python -m loom_bench.fetch``: B6's Java side from Maven Central, once per change of its poms.

:func:`ensure` runs ``mvn -q -B -f loom_bench/connect/pom.xml package``, which puts Kafka Connect's worker
classpath into ``.cache/connect/libs`` and Debezium's JDBC sink plugin into ``.cache/connect/plugins``;
:func:`ensure_converter` runs ``loom_bench/connect/converter/pom.xml`` (W4's Apicurio converter, into
``.cache/connect-converter/apicurio-converter``, a plugin folder of its own, with the Schema Registry's Maven
settings: Central only). ``scripts/bench.sh`` and B6's integration tests call them; a stamp named after each pom's
hash skips it while nothing changed. Fails (:class:`FetchError`) when Java or Maven is missing or Maven cannot
resolve the artifacts.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from loom_bench.launch import CONNECT_DIR, CONVERTER_DIR, ROOT

POM = ROOT / "loom_bench" / "connect" / "pom.xml"
CONVERTER_POM = ROOT / "loom_bench" / "connect" / "converter" / "pom.xml"
CENTRAL_ONLY = ROOT / "scripts" / "registry" / "settings.xml"


class FetchError(RuntimeError):
    """B6's jars could not be fetched: the message says what to install or check."""


def ensure(connect_dir: Path = CONNECT_DIR) -> Path:
    """Fetch into ``connect_dir`` unless its stamp matches the pom; returns ``connect_dir``."""
    return _fetch(POM, connect_dir, ("libs", "plugins", "build"))  # build/ holds the unpack markers


def ensure_converter(converter_dir: Path = CONVERTER_DIR) -> Path:
    """Fetch W4's converter plugin into ``converter_dir`` unless its stamp matches its pom."""
    return _fetch(CONVERTER_POM, converter_dir, ("apicurio-converter", "build"), "-s", str(CENTRAL_ONLY))


def _fetch(pom: Path, into: Path, outputs: tuple[str, ...], *settings: str) -> Path:
    stamp = into / f".fetched-{hashlib.sha256(pom.read_bytes()).hexdigest()[:16]}"
    if stamp.is_file():
        return into
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise FetchError(f"B6 (Kafka Connect) needs {' and '.join(missing)} on PATH: install Java 17 and Maven")
    for old in outputs:
        shutil.rmtree(into / old, ignore_errors=True)
    done = subprocess.run(
        ["mvn", "-q", "-B", *settings, "-f", str(pom), f"-Dconnect.dir={into.resolve()}", "package"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise FetchError(f"mvn could not fetch B6's artifacts (see {pom}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    for old_stamp in into.glob(".fetched-*"):
        old_stamp.unlink()
    stamp.touch()
    return into


def main() -> int:
    try:
        found = [ensure(), ensure_converter()]
    except FetchError as exc:
        sys.stderr.write(f"loom_bench.fetch: {exc}\n")
        return 1
    sys.stderr.write(f"loom_bench.fetch: {', '.join(map(str, found))} ready\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
