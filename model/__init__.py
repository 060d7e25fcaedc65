"""Model: forward modes over timm's VisionTransformer, heads, decoders, masking (issue 4)."""
