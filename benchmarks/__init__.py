"""Benchmarks and accuracy scoring (run as scripts; the sample-program scoring is also imported
by tests/test_samples.py as ``benchmarks.samples``)."""
