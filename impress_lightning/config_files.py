"""Check the ``--config`` files of a command line before jsonargparse reads them, so a missing file or a YAML
syntax error is reported with the file's name and the line (jsonargparse only says ``"<unicode string>"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml


class ConfigFileError(ValueError):
    """A ``--config`` file is missing or is not valid YAML; the message is one line with the fix."""


def config_values(argv: Sequence[str]) -> list[str]:
    """The values given to ``--config`` (``--config X`` and ``--config=X``), in order."""
    values = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--config="):
            values.append(arg.split("=", 1)[1])
    return values


def check_config_files(argv: Sequence[str]) -> None:
    """Raise :class:`ConfigFileError` for a ``--config`` path that does not exist, is a folder, or is not valid
    YAML. A value that is YAML itself (``--config '{trainer: {...}}'``, which jsonargparse accepts) is left
    to jsonargparse."""
    for value in config_values(argv):
        path = Path(value)
        if path.is_dir():
            raise ConfigFileError(f"--config {value} is a folder: pass a YAML file (e.g. configs/quickstart.yaml)")
        if not path.is_file():
            if any(c in value for c in ":{}\n"):
                continue  # inline YAML
            raise ConfigFileError(f"--config {value} does not exist: pass an existing YAML file (e.g. "
                                  "configs/quickstart.yaml)")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigFileError(f"--config {value} is not valid YAML{where} ({problem}): fix the file") from None
        except UnicodeDecodeError:
            raise ConfigFileError(f"--config {value} is not a text file: pass a YAML file") from None
