"""How a command ends on a user mistake: one line ``error: <what> ...: <fix>`` on stderr and exit status 2.

A user mistake is an exception of one of :data:`USER_ERRORS`, raised with a message that names the field and
the fix (bad settings, unreadable or mismatched checkpoints, missing or misplaced data, no network, a run
directory in use, a diverged run). Anything else is a bug of ours and keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from typing import Callable

from impress_lightning.callbacks.numerics import NonFiniteError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, ArgumentError, NonFiniteError, ConnectionError,
    FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
USAGE_ERROR_STATUS = 2
_MAX_CHARS = 400


def one_line(message: str) -> str:
    """``message`` on one line: whitespace runs collapsed, jsonargparse's wording tidied (``model.x: expected
    int``; of a union's alternatives such as ``int | None`` only the one that is not ``None``), shortened to a
    readable length."""
    text = re.sub(r"\s+", " ", str(message)).strip()
    text = re.sub(r'^Parser key "([^"]+)": ', r"\1: ", text)
    union = re.match(r"^(?:(\S+): )?Does not validate against any of the Union subtypes .*? Errors: (.*?)"
                     r"(?: Given value type: .*? Given value: (.*))?$", text)
    if union:
        reasons = [r.strip(" -") for r in union.group(2).split(" - ") if r.strip(" -") and "NoneType" not in r]
        if len(reasons) == 1:
            key, given = union.group(1), union.group(3)
            text = f"{key}: {reasons[0]}. Got value: {given}" if key else reasons[0]
    text = re.sub(r"Expected an? typing\.Literal\[(.*?)\]", r"expected one of [\1]", text)
    text = re.sub(r"Expected an? <class '([\w.]+)'>", r"expected \1", text)
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 3] + "..."


def parser_message(err: ArgumentError, prog: str) -> str:
    """A jsonargparse error as one line that ends with where the options are listed."""
    return f"{one_line(str(err.message if hasattr(err, 'message') else err))} (see `{prog} --help`)"


def run_reporting_errors(main: Callable[[], object], prog: str) -> int:
    """Call ``main``; a user mistake prints one ``error:`` line and gives status 2 (IMPRESS_TRACEBACK=1 re-raises
    it with its traceback). Returns the exit status."""
    try:
        main()
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # SystemExit("error: ...") of a tool: the same one-line contract
            print(one_line(exit_.code), file=sys.stderr)
            return USAGE_ERROR_STATUS
        return 0 if exit_.code is None else int(exit_.code)
    except USER_ERRORS as err:
        if os.environ.get("IMPRESS_TRACEBACK"):
            raise
        text = parser_message(err, prog) if isinstance(err, ArgumentError) else one_line(str(err) or type(err).__name__)
        print(f"error: {text}", file=sys.stderr)
        return USAGE_ERROR_STATUS
    return 0
