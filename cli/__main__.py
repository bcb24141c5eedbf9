"""``python -m cli``: the same command line as the ``peftpipe`` console script."""

from cli.app import main

main()
