"""`python -m workflow` is the `avrr` command."""

from workflow.cli import main

main()
