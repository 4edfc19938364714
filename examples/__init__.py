"""Training tooling, kept apart from the pipeline API; a package so tests can import it."""
