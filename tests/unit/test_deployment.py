"""A deployment is its own (:mod:`loom_ray.deployment`): what it is, which coordinator a driver joins, replaces
or refuses, and which driver's exit drains it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loom_ray.deployment import Identity, Ownership, Verdict, compare, identity_of
from loom_ray.main import progress_line
from loom_ray.settings import Settings

DSN = "postgresql://ingest:secret@db:5432/app"


def test_the_identity_names_what_and_where_never_a_secret() -> None:
    found = identity_of(Settings(kafka_topics="payments,orders", db_dsn=DSN, db_schema="loom"))
    assert (found.topics, found.database, found.schema) == (("orders", "payments"), "db:5432/app", "loom")
    assert "secret" not in repr(found)
    assert Identity.from_dict(found.as_dict()) == found


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({}, True),
        ({"kafka_batch_size": 500}, False),  # any setting: the consumers would run with the old one
        ({"db_dsn": "postgresql://ingest:rotated@db:5432/app"}, False),  # a secret, by its digest
        ({"kafka_topics": "orders"}, False),
        ({"schema_registry_url": "http://registry:8081"}, False),  # hidden in errors, yet a plain string
        ({"schema_registry_password": "pw"}, False),
    ],
)
def test_the_fingerprint_covers_every_setting(change: dict[str, object], same: bool) -> None:
    base = {"kafka_topics": "payments,orders", "db_dsn": DSN, "deployment": "pay"}
    assert (
        identity_of(Settings(**base)).fingerprint == identity_of(Settings(**{**base, **change})).fingerprint
    ) is same


def test_a_driver_joins_its_own_replaces_it_when_changed_and_refuses_another_databases() -> None:
    ours = identity_of(Settings(kafka_topics="orders", db_dsn=DSN, deployment="orders"))
    assert compare(ours, ours) is Verdict.JOIN
    assert compare(ours, replace(ours, topics=("orders", "refunds"), fingerprint="x")) is Verdict.REPLACE
    assert compare(ours, replace(ours, database="other:5432/app")) is Verdict.REFUSE
    assert compare(ours, replace(ours, schema="loom")) is Verdict.REFUSE


def test_only_the_driver_that_attached_last_drains_the_coordinator() -> None:
    owner = Ownership()
    assert owner.attach("first")
    assert owner.attach("second")  # a new driver took over (the first one is still draining its watch loop)
    assert not owner.may_stop("first")  # the first one's exit leaves it running
    assert not owner.stopping
    assert owner.may_stop("second") and owner.stopping
    assert not owner.attach("third")  # being stopped: the third waits for it to end and creates a new one


def test_after_a_restart_the_watching_driver_owns_the_coordinator_again() -> None:
    restarted = Ownership()  # Ray restarted the actor: its memory is gone
    restarted.claim("driver")
    assert restarted.owner == "driver"
    restarted.claim("someone else")  # only while nobody owns it
    assert restarted.owner == "driver"
    assert Ownership().may_stop(None)  # an operator's stop needs no token


def test_the_progress_line_shows_consumers_waiting_to_be_placed() -> None:
    status = {
        "lag": 5,
        "actors": {"c1": {}, "c2": {}},
        "assigned": 4,
        "partitions": 4,
        "database": True,
        "pending": {"c3": 42.0},
    }
    line = progress_line(status, 10, (1.0, 5.0), 10, 60.0)
    assert "2 actors, 1 actors pending (waiting 42s for a node to place them on), 4/4 partitions assigned" in line
    assert "pending" not in progress_line({**status, "pending": {}}, 10, (1.0, 5.0), 10, 60.0)
