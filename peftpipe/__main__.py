"""``python -m peftpipe``: the command line (package ``cli``), kept as an entry point for scripts.

An entry point is run, never imported, so it may reach the top layer from here.
"""

from cli.app import main

main()
