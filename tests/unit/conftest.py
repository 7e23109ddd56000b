"""Guards for every unit test: no Ray cluster, and no ``LOOM_*`` variable leaking in from the developer's shell."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, NoReturn

import pytest


def _refuse_ray(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise RuntimeError("unit tests must not start Ray")


@pytest.fixture(autouse=True)
def _unit_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("ray") is not None:
        import ray

        monkeypatch.setattr(ray, "init", _refuse_ray)
    for name in [n for n in os.environ if n.upper().startswith("LOOM_")]:
        monkeypatch.delenv(name)
