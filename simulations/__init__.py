"""Scenario files and the runner over Flower's simulation engine (Ray backend)."""
