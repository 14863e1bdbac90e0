"""pipeline: the fast path (worker, stages, upcalls), the slow path and the CLI."""
