"""Data: sources (ImageNet, IN-22k, embedded default) -> shards -> loaders of views."""
