"""Errors, paths, file writing, cache entries, hardware, the process group, run folders, figures: imports no other headstart package."""
