"""The scale benchmark's throughput summary: the best rate, the largest count's share, memory per partition."""

from __future__ import annotations

from typing import Any

from loom_bench.scale import throughput_markdown
from loom_bench.scale_throughput import summarise


def _run(partitions: int, rate: float | None, rss: float | None) -> dict[str, Any]:
    return {
        "partitions": partitions,
        "messages": 1000,
        "msgs_per_s": rate,
        "lost": 0,
        "duplicated": 0,
        "consumer_rss_mb": rss,
        "consumer_rss_kb_per_partition": None if rss is None else rss * 1024 / partitions,
    }


def test_summary_compares_the_largest_count_with_the_best() -> None:
    runs = [_run(8, 90_000.0, 300.0), _run(32, 100_000.0, 310.0), _run(256, 92_000.0, 356.0)]
    assert summarise(runs) == {
        "best_msgs_per_s": 100_000.0,
        "largest_of_best": 0.92,
        "rss_kb_per_added_partition": 231.2,  # (356 - 300) MiB over 248 more partitions
    }


def test_summary_of_failed_runs_has_no_figures() -> None:
    failed = {"partitions": 8, "messages": 1000, "error": "RuntimeError: no Ray"}
    assert summarise([failed]) == {"best_msgs_per_s": None, "largest_of_best": None, "rss_kb_per_added_partition": None}
    # The largest count failed: its share of the best is unknown, not 0.
    summary = summarise([_run(8, 90_000.0, 300.0), {**failed, "partitions": 256}])
    assert summary["largest_of_best"] is None and summary["rss_kb_per_added_partition"] is None


def test_markdown_says_whether_the_largest_count_is_within_ten_percent() -> None:
    within = throughput_markdown(
        {"runs": [_run(8, 100.0, 1.0), _run(256, 91.0, 2.0)], **summarise([_run(8, 100.0, 1.0), _run(256, 91.0, 2.0)])}
    )
    assert within[-1].startswith("- throughput at the largest count: 0.91 of the best") and "— met" in within[-1]
    below = [_run(8, 100.0, 1.0), _run(256, 89.0, 2.0)]
    assert "**not met**" in throughput_markdown({"runs": below, **summarise(below)})[-1]
    failed = [{"partitions": 8, "messages": 1000, "error": "x"}]
    assert "| 8 | 1,000 | failed |" in throughput_markdown({"runs": failed, **summarise(failed)})[2]
