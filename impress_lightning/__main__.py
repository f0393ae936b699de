"""``python -m impress_lightning`` runs the same command as the ``impress-lightning`` console script."""

from impress_lightning.commands import entry

entry()
