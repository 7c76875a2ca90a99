"""The benchmark suite (`make bench`): figures against the stack's ceiling and the peers."""
