"""Bindings: OS packet interfaces, each presented to the pipeline as netmap rings."""
