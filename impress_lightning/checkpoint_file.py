"""Read a training checkpoint and check that it fits the config, before anything in a run directory changes.

``fit --ckpt_path``, ``validate``, ``test`` and ``export`` all go through :func:`load_checkpoint`, so an
unreadable file, a file of another library and a missing path get the same one-line answer everywhere;
:func:`config_mismatch` names every setting in which the checkpoint's run and the current config differ.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any, Mapping

import torch


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the config; the message is one line that says what to do."""


# Settings a resumed run may change: they steer later tasks or the machine, not what the checkpoint holds.
# Any other difference (backbone, tasks, impressions, their source, epochs, seed, dataset, ...) is refused.
RESUMABLE_MODEL = frozenset({"alpha_start", "cosine_schedule", "alpha_regularization", "probe_batches",
                             "eval_cache_size"})
RESUMABLE_DATA = frozenset({"data_dir", "download", "batch_size", "eval_batch_size", "num_workers", "pin_memory",
                            "eval_cache_mib"})
# Evaluating (validate / test) runs no schedule and reads no training examples: epochs, the training subset and
# augmentation may differ too.
EVALUABLE_MODEL = RESUMABLE_MODEL | {"impression_epochs", "combination_epochs"}
EVALUABLE_DATA = RESUMABLE_DATA | {"train_subset", "augment"}
_SKIPPED = frozenset({"_instantiator"})


def load_checkpoint(path: str | Path, trust: bool = False, trust_flag: str | None = None,
                    field: str = "--ckpt_path") -> tuple[dict[str, Any], bytes]:
    """The dict and raw bytes of the ImpressLearnModule checkpoint at ``path``, read on CPU with
    ``weights_only=True`` (as Lightning does when it resumes) unless ``trust``. ``trust_flag`` names the option
    that sets ``trust``, for the hint when a file needs it.

    Raises :class:`CheckpointError` for a missing path, a folder, an unreadable (truncated, garbage) file and a
    file that is not an impress-lightning checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{field} {path} is a folder: pass a checkpoint file (e.g. {path / 'last.ckpt'})")
    if not path.is_file():
        raise CheckpointError(f"{field} {path} does not exist: pass an existing .ckpt file (e.g. "
                              "<run dir>/checkpoints/last.ckpt)")
    content = path.read_bytes()
    try:
        ckpt = torch.load(io.BytesIO(content), map_location="cpu", weights_only=not trust)
    except Exception as err:  # noqa: BLE001 - one answer for any unreadable file
        hint = f"; if you trust it, pass {trust_flag}" if trust_flag and not trust and "weights_only" in str(err) \
            else ""
        raise CheckpointError(f"{field} {path} cannot be read as a checkpoint ({type(err).__name__}: truncated or "
                              f"not a checkpoint): pass another file, e.g. checkpoints/taskNN-*.ckpt{hint}"
                              ) from None
    if not isinstance(ckpt, dict) or "table.num_learned" not in (ckpt.get("state_dict") or {}) \
            or "backbone" not in (ckpt.get("hyper_parameters") or {}):
        raise CheckpointError(f"{field} {path} is not an impress-lightning checkpoint (no ImpressLearnModule state "
                              "of this version): pass a checkpoint written by impress-lightning fit")
    return ckpt, content


def _plain(value: Any) -> Any:
    """Comparable form of a saved setting: tuples as lists, a class_path dict as (short name, init args)."""
    if isinstance(value, Mapping):
        if "class_path" in value:
            return (str(value["class_path"]).rsplit(".", 1)[-1], _plain(dict(value.get("init_args") or {})))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):  # an object built in Python
        return (type(value).__name__, _plain(vars(value)))
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def init_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls.__init__``: what a setting added after a checkpoint was written meant before."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str,
                allowed: frozenset[str], defaults: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between a checkpoint's settings and the config's, as
    ``"model.backbone: 'fc1024' in the config, 'lenet_300_100' in the checkpoint"``. A setting the checkpoint
    does not know (it predates it) is no difference while the config leaves it at its default in ``defaults``:
    new settings default to the behaviour that came before them."""
    refused, notes = [], []
    missing = object()
    defaults = defaults or {}
    for key in sorted(set(saved) | set(current)):
        if key in _SKIPPED:
            continue
        old, new = saved.get(key, missing), current.get(key, missing)
        if old is not missing and new is not missing and _plain(old) == _plain(new):
            continue
        if old is missing and new is not missing and key in defaults and _plain(new) == _plain(defaults[key]):
            continue
        name = "data class" if key == "_class_path" else f"{prefix}.{key}"
        text = (f"{name}: {'unset' if new is missing else _show(_plain(new))} in the config, "
                f"{'unset' if old is missing else _show(_plain(old))} in the checkpoint")
        (notes if key in allowed else refused).append(text)
    return refused, notes


def config_mismatch(ckpt: Mapping[str, Any], model_hparams: Mapping[str, Any],
                    data_hparams: Mapping[str, Any] | None, path: str | Path, evaluating: bool = False,
                    model_defaults: Mapping[str, Any] | None = None,
                    data_defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Raise :class:`CheckpointError` naming every refused difference between checkpoint ``path`` and the
    config (settings outside ``RESUMABLE_*``, or ``EVALUABLE_*`` when ``evaluating``); return the allowed ones
    (to print as notes). ``*_defaults`` (:func:`init_defaults`) let a checkpoint older than a setting load
    while that setting stays at its default."""
    model_allowed, data_allowed = (EVALUABLE_MODEL, EVALUABLE_DATA) if evaluating else (RESUMABLE_MODEL,
                                                                                       RESUMABLE_DATA)
    refused, notes = differences(ckpt.get("hyper_parameters") or {}, model_hparams, "model", model_allowed,
                                 model_defaults)
    if data_hparams is not None and ckpt.get("datamodule_hyper_parameters") is not None:
        data_refused, data_notes = differences(ckpt["datamodule_hyper_parameters"], data_hparams, "data",
                                               data_allowed, data_defaults)
        refused, notes = refused + data_refused, notes + data_notes
    if refused:
        raise CheckpointError(f"--ckpt_path {path} does not fit this config ({'; '.join(refused)}): use the config "
                              "of the run that wrote it (its config.yaml), or drop --ckpt_path and start elsewhere "
                              "with --trainer.logger.init_args.save_dir <new dir>")
    return notes
