"""`python -m splitc.cli` (torchrun uses it)."""

from splitc.cli.main import main

if __name__ == "__main__":
    main()
