"""Subcommands: one module each (HELP, add_arguments, run)."""
