"""Material for ``safeloader demo`` and the test-suite: a tiny random model and the one-step pipeline."""
