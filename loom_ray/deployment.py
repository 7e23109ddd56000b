"""A deployment is its own: what it ingests and where, which driver owns its coordinator, and the registry
(``loom_deployments``) that keeps two deployments from sharing a topic's offsets.

- :class:`Identity` (pure) says what a deployment is: its name (LOOM_DEPLOYMENT or derived), its topics, its
  database and schema, and a fingerprint of every setting. A driver that finds a coordinator of its name
  compares identities (:func:`compare`): the same one is joined; its own deployment with changed settings is
  replaced after a drain; another database or schema under the same name is refused.
- :class:`Ownership` (pure, held by the coordinator actor) records the driver that attached last, so only that
  driver's exit drains the coordinator: a driver started while the previous one drains waits for that
  coordinator to end and creates a new one; a previous driver that exits after a new one attached leaves it.
- :func:`register` (the driver, at start) and :func:`heartbeat` (the coordinator, every round) keep one row per
  deployment; :func:`register` refuses to start when another live deployment ingests one of the same topics
  into the same schema: their claims would fence each other for ever.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
from pydantic import SecretStr

from loom_ray.errors import ConfigError
from loom_ray.settings import SECRET_FIELDS, Settings

_REGISTRY_LOCK = 0x6C6F6F64  # "lood": serialises registrations, so two drivers starting at once see each other


@dataclass(frozen=True, slots=True)
class Identity:
    """What a deployment is; travels between the driver and the coordinator actor as a dict."""

    deployment: str
    topics: tuple[str, ...]
    database: str  # host:port/name, never a password
    schema: str
    fingerprint: str  # of every setting (secrets by their digest) and the routes with their tables

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, found: dict[str, Any]) -> Identity:
        return cls(
            found["deployment"], tuple(found["topics"]), found["database"], found["schema"], found["fingerprint"]
        )

    def describe(self) -> str:
        return f"topics {', '.join(self.topics)} into {self.database} schema {self.schema}"


def identity_of(settings: Settings) -> Identity:
    """The identity of the deployment ``settings`` describe."""
    parts = urlsplit(settings.dsn)
    settled = settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
    for name in SECRET_FIELDS:  # a changed secret is a changed setting; its digest tells without showing it
        value = getattr(settings, name)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value  # a URL is hidden, not a secret
        settled[name] = None if text is None else hashlib.sha256(text.encode()).hexdigest()
    settled["routes"] = settings.routes.model_dump(mode="json")
    digest = hashlib.sha256(orjson.dumps(settled, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return Identity(
        settings.deployment_name,
        tuple(sorted(settings.kafka_topics)),
        f"{parts.hostname}:{parts.port or 5432}{parts.path}",
        settings.db_schema,
        digest,
    )


class Verdict(StrEnum):
    """What a driver does with a coordinator of its deployment's name."""

    JOIN = "join"  # the same deployment, the same settings
    REPLACE = "replace"  # the same deployment, changed settings: drain it, then start one with ours
    REFUSE = "refuse"  # another database or schema under the same name: not ours to touch


def compare(ours: Identity, theirs: Identity) -> Verdict:
    """The verdict for a coordinator of ``theirs`` found by a driver of ``ours`` (same deployment name)."""
    if (ours.database, ours.schema) != (theirs.database, theirs.schema):
        return Verdict.REFUSE
    return Verdict.JOIN if ours.fingerprint == theirs.fingerprint else Verdict.REPLACE


class Ownership:
    """Which driver owns a coordinator now: the one that attached last (a token of its own). Held by the
    coordinator actor; after Ray restarts the actor nobody owns it until a driver asks again."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.stopping = False

    def attach(self, token: str) -> bool:
        """``token``'s driver takes the coordinator over; False while it is being stopped (that driver waits for
        it to end and creates a new one)."""
        if self.stopping:
            return False
        self.owner = token
        return True

    def claim(self, token: str) -> None:
        """A driver that watches the coordinator owns it again when nobody does (after Ray restarted it)."""
        if self.owner is None and not self.stopping:
            self.owner = token

    def may_stop(self, token: str | None) -> bool:
        """Whether a stop asked with ``token`` (None: an operator, ``ctl stop``) drains the coordinator: only its
        owner's does, or anyone's while nobody owns it. A yes marks it stopping."""
        if token is not None and self.owner not in (None, token):
            return False
        self.stopping = True
        return True


async def register(conn: asyncpg.Connection, identity: Identity, live_s: float) -> None:
    """Record the deployment (at the driver's start), first refusing with :class:`ConfigError` when another
    deployment seen within ``live_s`` ingests one of its topics into this schema (naming it and the fix)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _REGISTRY_LOCK)
        others = await conn.fetch(
            """SELECT deployment, topics, extract(epoch FROM now() - heartbeat_at) AS seen_s FROM loom_deployments
               WHERE deployment <> $1 AND stopped_at IS NULL AND topics && $2::text[]
                 AND heartbeat_at > now() - make_interval(secs => $3)""",
            identity.deployment,
            list(identity.topics),
            live_s,
        )
        if others:
            lines = [
                f"deployment {row['deployment']} (topics {', '.join(row['topics'])}, seen {row['seen_s']:.0f}s ago) "
                f"already ingests {', '.join(sorted(set(row['topics']) & set(identity.topics)))} into this schema"
                for row in others
            ]
            raise ConfigError(
                f"deployment {identity.deployment} ({identity.describe()}) would share offsets with another: "
                + "; ".join(lines)
                + ". Two deployments fence each other's claims for ever. Stop the other (python -m loom_ray.ctl "
                "stop --deployment <name>), or run this one under its name (LOOM_DEPLOYMENT=<name>) to replace "
                f"it; a deployment not seen for {live_s:.0f}s counts as gone"
            )
        await heartbeat(conn, identity)


async def heartbeat(conn: asyncpg.Connection, identity: Identity) -> None:
    """The coordinator is alive (every round) with these topics and settings."""
    await conn.execute(
        """INSERT INTO loom_deployments (deployment, topics, fingerprint) VALUES ($1, $2, $3)
           ON CONFLICT (deployment) DO UPDATE
           SET topics = EXCLUDED.topics, fingerprint = EXCLUDED.fingerprint, heartbeat_at = now(), stopped_at = NULL""",
        identity.deployment,
        list(identity.topics),
        identity.fingerprint,
    )


async def retire(conn: asyncpg.Connection, deployment: str) -> None:
    """The deployment's coordinator stopped: its topics are free for another deployment at once."""
    await conn.execute("UPDATE loom_deployments SET stopped_at = now() WHERE deployment = $1", deployment)
