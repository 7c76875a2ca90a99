"""ia-continu."""
