"""PostgreSQL's CPU per part in the benchmark: each server process named by what it is (autovacuum, the
writers) or, for a backend, by the local client process holding the other end of its connection; the split
aggregated over repetitions and rendered."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from loom_bench import report, summary
from loom_bench.measure import (
    PG_AUTOVACUUM,
    PG_UNKNOWN_CLIENT,
    PG_WRITERS,
    _Clients,
    label,
    pg_part,
    server_cpu_seconds,
)


def _no_clients(_: int) -> str | None:
    return None


@pytest.mark.parametrize(
    ("title", "part"),
    [
        ("postgres: autovacuum worker bench", PG_AUTOVACUUM),
        ("postgres: autovacuum launcher", PG_AUTOVACUUM),
        ("postgres: checkpointer", PG_WRITERS),
        ("postgres: background writer", PG_WRITERS),
        ("postgres: walwriter", PG_WRITERS),
        ("postgres: loom bench 127.0.0.1(40132) COPY", "backend: ray::Consumer"),
        ("postgres: loom bench 127.0.0.1(40133) idle", PG_UNKNOWN_CLIENT),
        ("postgres: loom bench [local] idle", PG_UNKNOWN_CLIENT),
    ],
)
def test_each_server_process_is_named_by_its_part(title: str, part: str) -> None:
    assert pg_part(title, {40132: "ray::Consumer"}.get) == part


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A real TCP connection inside this process: (client, server side)."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        yield client, accepted
    finally:
        for s in (client, accepted, server):
            s.close()


def test_a_client_port_names_the_local_process_holding_it(connection: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = connection
    clients = _Clients()
    assert clients(client.getsockname()[1]) == label(psutil.Process())
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    unused = free.getsockname()[1]
    free.close()
    assert clients(unused) is None  # no connection from that port: not a local client


def test_the_split_aggregates_as_medians_and_renders_backends_autovacuum_and_writers() -> None:
    def rep(consumer: float, coordinator: float, vacuum: float) -> dict[str, object]:
        split = {"backend: ray::Consumer": consumer, "backend: ray::Coordinator": coordinator, PG_AUTOVACUUM: vacuum}
        return {"msgs_per_s": 1.0, "cpu_s_per_million_pg": consumer + coordinator + vacuum, "cpu_split_pg": split}

    found = summary.aggregate([rep(4.0, 0.5, 0.2), rep(5.0, 0.3, 0.0), rep(4.5, 0.4, 0.4)])
    assert found["cpu_split_pg"] == {
        "backend: ray::Consumer": 4.5,
        "backend: ray::Coordinator": 0.4,
        PG_AUTOVACUUM: 0.2,
    }
    lines = report.pg_split_table({"variants": {"B4_tuned": found, "B1_2conn": {"cpu_s_per_million_pg": 3.4}}})
    assert lines[2] == "| B4_tuned | 5.3 | 4.9 | `ray::Consumer` 4.5, `ray::Coordinator` 0.4 | 0.2 | 0.0 | — |"
    assert len(lines) == 3  # a variant without the split is left out


def test_the_servers_cpu_counts_children_that_exited_between_two_samples(tmp_path: Path) -> None:
    """A backend of a short connection lives less than a sampling interval: the server's CPU still holds it,
    through the CPU of the children the postmaster (here a stand-in parent) reaped."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "sys.stdin.readline()\n"
        "for _ in range(3):\n"
        "    subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.3: pass'])\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        process = psutil.Process(parent.pid)
        before = server_cpu_seconds(process)
        assert before is not None
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "done\n"  # three children ran about 0.3 CPU-s each, and are gone
        after = server_cpu_seconds(process)
        assert after is not None and after - before >= 0.85
        assert process.children() == []
    finally:
        parent.communicate("end\n", timeout=30)
