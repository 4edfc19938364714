"""Schedulers: one file per algorithm, everything the loop needs precomputed on the device."""

__all__: list[str] = []
