"""Shard formats: WebDataset tars (+ DALI index files), FFCV betons, and their manifest."""
