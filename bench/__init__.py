"""Benchmarks and quality checks; a package so tests and examples can import `bench.shapes`."""
