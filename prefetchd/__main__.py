"""`python -m prefetchd` is the `prefetchd` command."""

from .cli import main

main()
