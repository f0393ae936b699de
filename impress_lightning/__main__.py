"""``python -m impress_lightning`` runs the same CLI as the ``impress-lightning`` console script."""

from impress_lightning.cli import entry

entry()
