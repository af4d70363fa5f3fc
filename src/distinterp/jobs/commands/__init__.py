"""The body of each `distinterp` command, one module per command (jobs/cli.py is the parser and main)."""
