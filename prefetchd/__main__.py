"""`python -m prefetchd` is the `prefetchd` command."""

from .cli import main

if __name__ == "__main__":  # decode workers are spawned: they import this module as __mp_main__
    main()
