"""loadgen as a subprocess for the fault tests, writing the ack log the checker reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from loom_ray import loadgen
from tests.faults.stack import FaultStack
from tests.support.services import ROOT


def env_int(name: str, default: int) -> int:
    """A size knob: quick defaults in CI, larger values from scripts/chaos.sh."""
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Producer:
    """loadgen as a subprocess, writing the ack log the checker reads."""

    stack: FaultStack
    topic: str
    workdir: Path
    messages: int
    partitions: int = 12
    rate: float | None = None
    ratio: float = 0.0
    seed: int = 1
    name: str = "acks"
    process: subprocess.Popen[bytes] | None = None

    @property
    def ack_log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def create_topic(self) -> Self:
        """Create the topic empty, so that the job can start before anything is produced."""
        loadgen.ensure_topic(self.stack.kafka, self.topic, self.partitions)
        return self

    def start(self) -> Self:
        """Produce in the background (loadgen creates the topic if needed)."""
        argv = [sys.executable, "-m", "loom_ray.loadgen", "--topic", self.topic, "--partitions", str(self.partitions)]
        argv += ["--messages", str(self.messages), "--size", "200", "--bootstrap-servers", self.stack.kafka]
        argv += ["--malformed-ratio", str(self.ratio), "--seed", str(self.seed), "--ack-log", str(self.ack_log)]
        if self.rate:
            argv += ["--rate", str(self.rate)]
        self._spawn(argv)
        return self

    def _spawn(self, argv: list[str]) -> None:
        """Run the producing process, its output in ``<name>.out``."""
        with (self.workdir / f"{self.name}.out").open("ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    @property
    def done(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait(self, timeout_s: float = 600) -> None:
        """Wait for the last acknowledgement; fail if any delivery failed."""
        assert self.process is not None
        code = self.process.wait(timeout_s)
        output = (self.workdir / f"{self.name}.out").read_text()[-2000:]
        assert code == 0, f"loadgen exited {code}: {output}"

    def fill(self) -> Self:
        """Produce everything now (preloaded topic)."""
        self.start().wait()
        return self

    def kill(self) -> None:
        """End a producer that is still running (test teardown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        """Stop producing now (SIGINT: loadgen waits for the outstanding acknowledgements, exits 130)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(60)
        assert code in (0, 130), f"loadgen exited {code}: {(self.workdir / f'{self.name}.out').read_text()[-2000:]}"
