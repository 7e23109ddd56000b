"""Pydantic models that routes name (``model = "tests.support.route_models:Order"``) in the routes tests."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field


class Customer(BaseModel):
    name: str


class Order(BaseModel):
    """An order event as an application would declare it."""

    order_id: int
    customer: Customer
    amount: Decimal = Field(ge=0)
    placed_at: datetime | None = None
    tags: list[str] = []
    note: str | None = None
    paid: bool = False


class Blob(BaseModel):
    """A field no column type fits."""

    data: bytes
