"""`python -m xpz ...`: the same command line as the `xpz` console script."""

from xpz.cli import main

if __name__ == "__main__":
    main()
