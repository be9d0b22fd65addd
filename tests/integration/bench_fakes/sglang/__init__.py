"""Stand-in for SGLang 0.5.19 in the benchmark's CPU dry run (see ../README.md)."""

__version__ = "0.5.19"
