"""``python -m impress_lightning`` runs the same command as the ``impress-lightning`` console script."""

from impress_lightning.console import entry

entry()
