"""The benchmark harness: ``python -m loom_bench`` (or ``scripts/bench.sh``).

One run preloads each workload's topic once, then drains it with every system (B0 Kafka-only, B1
COPY-only, B2 naive, B3 quixstreams, B4 loom-ray, B5 loom-ray's worker without Ray), each in its own
processes on a fresh table, and writes ``bench-results/latest.json`` and ``BENCHMARKS.md``.
Design and pitfalls: ``/work/shared/notes/performance.md`` (section 10).

Keep this package importable without third-party imports: B3's module runs under the bench venv.
"""
