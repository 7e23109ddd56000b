"""Operating the data: what ``python -m loom_ray.ctl dead-letters|replay|rewind|skip|pause|resume`` does.

- :mod:`~loom_ray.ops.selection`: the filter every command shares (topics or a route, error class, stage,
  time) and the topics it may act on;
- :mod:`~loom_ray.ops.audit`: ``loom_operations``, one row per operation (who, why, when, what, how many);
- :mod:`~loom_ray.ops.deadletters`: reading, resolving and re-failing dead letters;
- :mod:`~loom_ray.ops.records`: reading records back from Kafka and converting them as the consumer does;
- :mod:`~loom_ray.ops.replay`: dead letters run again through today's decoder and routes, exactly once;
- :mod:`~loom_ray.ops.moves`: rewinds and skips, applied by the coordinator (or by ctl while none runs);
- :mod:`~loom_ray.ops.reread`: what a flush does with records read again after a rewind;
- :mod:`~loom_ray.ops.pause`: paused topics;
- :mod:`~loom_ray.ops.cli`: the commands' arguments and what they print.

Every command works with the deployment's own settings (``LOOM_*``: the database, the schema, the broker,
the topics and the routes file), whether the job runs or not.
"""
