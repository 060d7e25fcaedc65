"""Methods: the views each needs, its teacher targets, its student passes and its loss."""
