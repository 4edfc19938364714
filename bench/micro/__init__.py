"""pytest-benchmark micro-benchmarks (CPU): `pytest bench/micro`. Not part of the default test run."""
