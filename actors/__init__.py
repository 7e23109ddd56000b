"""Ray actor classes: thin shells that put loom_ray's workers and coordinator on a Ray cluster."""
