"""The typed recipe and the one default recipe."""
