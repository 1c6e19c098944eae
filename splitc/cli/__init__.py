"""The command line: `splitc` and its subcommands."""
