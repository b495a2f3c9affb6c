"""Benchmarks of trio-ws against a python-websockets peer (`nox -s bench`).

Every figure comes from real processes talking over 127.0.0.1: the server
under test, load generators (`bench.loadgen`) and the orchestrator
(`bench.run`), which reads every process's CPU and memory from /proc.
docs/benchmarks.md says what is measured and how.
"""
