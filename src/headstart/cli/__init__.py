"""The command line: parsers, subcommands, flags read from the recipe schema. Nothing imports it."""

from headstart.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
