"""The driver's log stays bounded (:mod:`loom_ray.driver_log`): copied aside and emptied past its limit, only
when it is a file opened for appending."""

from __future__ import annotations

import os
from pathlib import Path

from loom_ray.driver_log import LogCap


def test_a_log_past_its_limit_is_copied_aside_and_emptied_and_appends_start_again(tmp_path: Path) -> None:
    path = tmp_path / "job-driver-x.log"
    with path.open("ab", buffering=0) as out:
        cap = LogCap.of(out.fileno(), 100)
        assert cap is not None and cap.path == str(path)
        out.write(b"a" * 60 + b"\n")
        assert not cap.check()  # under the limit: left alone
        out.write(b"b" * 60 + b"\n")
        assert cap.check()
        out.write(b"after\n")
    assert path.read_bytes() == b"after\n"  # appended at the start of the emptied file, no hole
    assert Path(f"{path}.1").read_bytes() == b"a" * 60 + b"\n" + b"b" * 60 + b"\n"


def test_a_second_rotation_replaces_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "driver.log"
    with path.open("ab", buffering=0) as out:
        cap = LogCap.of(out.fileno(), 10)
        assert cap is not None
        for text in (b"first line\n", b"second line\n"):
            out.write(text)
            assert cap.check()
    assert Path(f"{path}.1").read_bytes() == b"second line\n"
    assert path.read_bytes() == b""


def test_only_a_file_opened_for_appending_with_a_limit_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "driver.log"
    with path.open("wb") as written_at_an_offset:
        assert LogCap.of(written_at_an_offset.fileno(), 10) is None  # emptying it would leave a hole
    with path.open("ab") as appended:
        assert LogCap.of(appended.fileno(), 0) is None  # LOOM_DRIVER_LOG_MAX_BYTES=0: never
    read, write = os.pipe()
    try:
        assert LogCap.of(write, 10) is None  # a pipe (a terminal, `ray job submit` following the log)
    finally:
        os.close(read)
        os.close(write)
