"""Framework adapters; each imports its framework lazily, when first used."""
