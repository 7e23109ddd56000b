"""Routes (``LOOM_ROUTES_FILE``): each topic into the user's own table.

:mod:`~loom_ray.routes.model` parses and validates the file at start; :mod:`~loom_ray.routes.types` and
:mod:`~loom_ray.routes.convert` turn a record into typed column values (or a dead letter) on the consumer;
:mod:`~loom_ray.routes.sql` builds the statements; :mod:`~loom_ray.routes.tables` creates or checks the
tables at start. The flush that writes them is :mod:`loom_ray.sink.routed`.
"""
