"""Train: config, methods and the engine behind `accelerate launch train.py` (issue 5)."""
