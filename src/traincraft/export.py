"""A run's weights as a plain file that torch or safetensors read alone (``traincraft export``).

``best.safetensors`` is already a plain safetensors file; a training checkpoint (``.ckpt``) is
not a plain state dict (its small tensors are packed together, see :mod:`traincraft.checkpoint`).
:func:`export_weights` writes either set of weights as a flat ``{name: tensor}`` file that
``torch.load(path, weights_only=True)`` or ``safetensors.torch.load_file(path)`` reads, with the
names of ``model.state_dict()`` (no ``module.`` / ``_orig_mod.`` prefixes).

Example:
    >>> export_weights("runs/quickstart/20261121-101500", format="pt")
    PosixPath('runs/quickstart/20261121-101500/model.pt')
"""

from __future__ import annotations

from pathlib import Path

from traincraft.errors import TraincraftError

#: Format -> the file name suffixes it is written under (the first is the default's).
FORMATS = {"safetensors": (".safetensors",), "pt": (".pt", ".pth", ".bin")}
#: Which weights: the run's best (best.safetensors), or the live ones of its newest checkpoint.
WHICH = ("best", "last")


def export_format(output: str | Path | None, format: str | None) -> str:
    """The format asked for, else the one ``output``'s suffix names, else safetensors; a
    suffix of the other format is refused (a ``.pt`` name for safetensors bytes misleads)."""
    if format is not None and format not in FORMATS:
        raise TraincraftError(f"--format {format!r}: choose {' or '.join(FORMATS)}")
    suffix = Path(output).suffix.lower() if output is not None else ""
    named = next((name for name, suffixes in FORMATS.items() if suffix in suffixes), None)
    if format is None:
        return named or "safetensors"
    if named is not None and named != format:
        raise TraincraftError(f"--output {output} names a {named} file, but --format is {format}: "
                              f"name it {Path(output).with_suffix(FORMATS[format][0]).name}")
    return format


def export_weights(run_dir: str | Path, output: str | Path | None = None, *, format: str | None = None,
                   which: str = "best") -> Path:
    """Write a run's weights as a plain file and return its path.

    Args:
        run_dir: the run folder.
        output: the file to write; default ``RUN_DIR/model.safetensors`` (or ``model.pt``).
        format: ``"safetensors"`` or ``"pt"`` (a ``torch.save`` of a dict of tensors); default:
            from ``output``'s suffix, else safetensors.
        which: ``"best"``: the weights the run stands for (``best.safetensors``, written again
            from the checkpoint when missing); ``"last"``: the model's weights in the newest good
            checkpoint (the live weights where training stopped).

    Raises:
        TraincraftError: an unknown format or choice, a folder given as ``output``, a run
            without the weights asked for.
    """
    from traincraft.checkpoint import find_resume_checkpoint, save_weights_dict, unwrap_key
    from traincraft.files import atomic_write
    from traincraft.run import run_weights

    run_dir = Path(run_dir)
    format = export_format(output, format)
    if which not in WHICH:
        raise TraincraftError(f"--weights {which!r}: choose {' or '.join(WHICH)}")
    target = Path(output) if output is not None else run_dir / f"model{FORMATS[format][0]}"
    if target.is_dir():
        raise TraincraftError(f"--output {target} is a folder: give a file name, "
                              f"e.g. {target / ('model' + FORMATS[format][0])}")
    if not target.parent.is_dir():
        raise TraincraftError(f"--output {target}: the folder {target.parent} does not exist")
    if which == "best":
        tensors = run_weights(run_dir)
    else:
        _, state = find_resume_checkpoint(run_dir, warn=_say)
        tensors = {unwrap_key(k): v for k, v in state["model"].items()}
    if format == "safetensors":
        return save_weights_dict(tensors, target)
    import torch

    # Each tensor with storage of its own: a view would carry its whole base storage along.
    plain = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    return atomic_write(target, lambda handle: torch.save(plain, handle))


def _say(line: str) -> None:
    import sys

    print(line, file=sys.stderr)
