"""Reference servers the benchmark compares trio-ws with."""
