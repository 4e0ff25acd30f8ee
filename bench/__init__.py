"""Benchmarks: `python -m bench SCENARIO`; each prints the machine, the parameters and the figures."""
