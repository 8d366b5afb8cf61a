"""Building blocks shared by two or more model families (backbones, text encoders, position encodings, ...)."""
