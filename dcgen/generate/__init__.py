"""Generation: per-scene conditions, the in-process pipeline (checkpoints + conditions + seeds → clips),
the Ray Data mass-production job and its quality gates."""
