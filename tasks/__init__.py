"""Plain, typed building blocks that the flows wrap."""
