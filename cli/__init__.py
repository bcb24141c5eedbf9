"""The ``peftpipe`` command line: the top layer, above ``flows/`` and ``blocks/``.

It sits outside the Prefect-free core (``peftpipe/``) because ``peftpipe run`` starts a flow and
``peftpipe artifacts`` reads credentials blocks; nothing below imports it.
"""
