"""Complete training recipes with their own loops (``python -m nnx.recipes.<name>``)."""
