"""Listing layouts, splitting, decoding, batches, balancing, held-out and overlap checks."""
