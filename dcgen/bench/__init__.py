"""Benchmarks: the top floor, may import any room."""
