"""The embedded AWS: the real template.yaml, ASL and handlers running on in-process moto."""
