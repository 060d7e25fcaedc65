"""Command-line tools: convert, profile (and, with later issues, knn, linear_probe, export, show)."""
