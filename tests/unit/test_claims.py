"""Where a claim resumes: first sight, the stored offset, a recreated topic, a truncated log."""

from __future__ import annotations

from loom_ray.policy.claims import (
    LOG_TRUNCATED,
    TOPIC_RECREATED,
    BrokerPartition,
    ClaimPlan,
    StoredOffset,
    plan_claim,
)


def test_first_sight_starts_at_the_log_start_or_at_the_end() -> None:
    broker = BrokerPartition(low=5, high=90, topic_id="A")
    assert plan_claim(None, broker, from_end=False) == ClaimPlan(5, 0)
    assert plan_claim(None, broker, from_end=True) == ClaimPlan(90, 0)


def test_a_stored_offset_within_the_log_resumes_there_whatever_from_end_says() -> None:
    stored = StoredOffset(next_offset=40, incarnation=2, topic_id="A")
    for from_end in (False, True):
        assert plan_claim(stored, BrokerPartition(5, 90, "A"), from_end) == ClaimPlan(40, 2)


def test_an_offset_below_the_log_start_is_left_to_the_consumer() -> None:
    # Retention gaps are recorded by the consumer with the batch that follows, not by the claim.
    assert plan_claim(StoredOffset(3, 0, "A"), BrokerPartition(50, 90, "A"), False) == ClaimPlan(3, 0)


def test_a_stored_offset_at_the_high_watermark_is_not_a_reset() -> None:
    assert plan_claim(StoredOffset(90, 0, None), BrokerPartition(0, 90, "A"), False) == ClaimPlan(90, 0)


def test_a_new_topic_id_starts_a_new_incarnation_at_the_log_start() -> None:
    plan = plan_claim(StoredOffset(1_000, 3, "A"), BrokerPartition(0, 2_000, "B"), from_end=True)
    assert (plan.next_offset, plan.incarnation) == (0, 4)
    assert plan.gap is not None
    assert (plan.gap.incarnation, plan.gap.from_offset, plan.gap.to_offset, plan.gap.reason) == (
        3,
        1_000,
        None,
        TOPIC_RECREATED,
    )
    assert "A -> B" in plan.gap.detail


def test_without_a_stored_id_an_offset_above_the_high_watermark_means_recreated() -> None:
    plan = plan_claim(StoredOffset(1_000, 0, None), BrokerPartition(0, 7, "B"), False)
    assert (plan.next_offset, plan.incarnation) == (0, 1)
    assert plan.gap is not None and plan.gap.reason == TOPIC_RECREATED
    assert "above the high watermark 7" in plan.gap.detail


def test_the_same_topic_below_the_stored_offset_was_truncated() -> None:
    plan = plan_claim(StoredOffset(1_000, 0, "A"), BrokerPartition(0, 950, "A"), False)
    # The broker will write new records at 950..999 again: a new incarnation keeps them apart from the rows.
    assert (plan.next_offset, plan.incarnation) == (950, 1)
    assert plan.gap is not None
    assert (plan.gap.incarnation, plan.gap.from_offset, plan.gap.to_offset, plan.gap.reason) == (
        0,
        950,
        1_000,
        LOG_TRUNCATED,
    )


def test_an_unknown_broker_id_does_not_reset() -> None:
    assert plan_claim(StoredOffset(40, 1, "A"), BrokerPartition(0, 90, None), False) == ClaimPlan(40, 1)
