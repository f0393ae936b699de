"""Command-line tools that are not Trainer methods: ``impress-lightning export`` and ``impress-lightning predict``.

Each module has a ``main(argv)`` with its own ``--help``; :mod:`impress_lightning.cli` dispatches to them.
"""
