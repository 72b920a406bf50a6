"""Speed benchmarks; ``reference_pipelines`` is importable from the tests."""
