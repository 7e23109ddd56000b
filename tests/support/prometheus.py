"""A real Prometheus server (Debian's ``prometheus``) for tests: scrapes the targets in a file-SD file (the
one Ray writes for its nodes), loads rule files, answers PromQL over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support.pipeline import terminate_group, wait_until


def prometheus_binary() -> str | None:
    """The path of ``prometheus`` (installed by scripts/bootstrap.sh), or None."""
    return shutil.which("prometheus")


class Prometheus:
    """One Prometheus on 127.0.0.1:``port``, scraping every second; stopped (by pid) on exit."""

    def __init__(self, folder: Path, port: int, service_discovery: Path, rule_files: list[Path]) -> None:
        binary = prometheus_binary()
        assert binary is not None, "prometheus is not installed"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(service_discovery)]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self._log = folder / "prometheus.log"
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log.open("wb"),
            start_new_session=True,
        )
        wait_until(self._ready, 60, "Prometheus to answer", interval_s=0.5)

    def _ready(self) -> bool:
        assert self._process.poll() is None, self._log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``; its ``data`` (raises if Prometheus reports an error, e.g. bad PromQL)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:  # noqa: S310
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector an expression returns now."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def close(self) -> None:
        terminate_group(self._process)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
