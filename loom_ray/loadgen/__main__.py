"""``python -m loom_ray.loadgen``."""

from loom_ray.loadgen.cli import main

raise SystemExit(main())
