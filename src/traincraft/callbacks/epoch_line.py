"""The line said when an epoch ends: what matters first, wrapped at field boundaries.

Fields, in this order::

    epoch  3/40 0.26s  val_loss 0.7167 *  val_accuracy 96.67%  train_loss 0.7386
        train_accuracy 95.47%  grad_norm 0.8527  lr 0.000539

1. the epoch and its wall time (bookkeeping, kept together);
2. the monitored figure (early stopping's, else ``val_loss``, else ``train_loss``) with ``*``
   when it is a new best and ``(patience 2/8)`` while early stopping waits;
3. the other validation figures; 4. the training figures (loss, its terms, metrics, gradient
   norm); 5. anything else in the history row; 6. the learning rate once: one number when every
   parameter group has the same, else ``lr 5.39e-05..0.000539``; the momentum when a schedule
   cycles it.

Numbers follow :mod:`traincraft.formatting` (rates as percentages, 4 significant digits).

Example:
    >>> fields = epoch_fields({"epoch": 3, "lr": 1e-3, "train_loss": 0.5, "val_loss": 0.4},
    ...                       max_epochs=10, monitor="val_loss", note="*")
    >>> wrap(fields, width=80)
    ['epoch  3/10  val_loss 0.4 *  train_loss 0.5  lr 0.001']
"""

from __future__ import annotations

from collections.abc import Mapping

from traincraft.formatting import format_figure, format_lr, format_seconds

#: Continuation lines of a wrapped epoch line start with this.
INDENT = "    "
#: Between two fields.
GAP = "  "

_BOOKKEEPING = ("epoch", "step", "seconds", "momentum")


def epoch_fields(row: Mapping[str, float], *, max_epochs: int | None, monitor: str | None,
                 note: str = "") -> list[str]:
    """The fields of an epoch's line, in order (see the module docs). ``note`` follows the
    monitored figure (``"*"``, ``"(patience 2/8)"``)."""
    width = len(str(max_epochs)) if max_epochs else 1
    epoch = int(row.get("epoch", 0))
    fields = [f"epoch {epoch:>{width}}/{max_epochs}" if max_epochs else f"epoch {epoch}"]
    if "seconds" in row:  # with the epoch: bookkeeping, never a line of its own when wrapped
        fields[0] += f" {format_seconds(row['seconds'])}"
    names = [k for k in row if k not in _BOOKKEEPING and not _is_lr(k)]
    if monitor in names:
        fields.append(_field(monitor, row[monitor], note))
    val = [k for k in names if k.startswith("val_") and k != monitor]
    train = [k for k in names if k.startswith("train_") and k != monitor]
    train += [k for k in names if k == "grad_norm" and k != monitor]
    others = [k for k in names if k not in val and k not in train and k != monitor]
    fields += [_field(k, row[k]) for k in (*val, *train, *others)]
    lr = lr_field(row)
    if lr:
        fields.append(lr)
    if "momentum" in row:
        fields.append(f"momentum {format_figure('momentum', row['momentum'])}")
    return fields


def lr_field(row: Mapping[str, float]) -> str:
    """``lr 0.001`` when the parameter groups share one LR (or only ``lr`` is recorded), else
    the range over the groups ``lr 1e-05..0.001``; empty when the row has none."""
    groups = [float(v) for k, v in row.items() if k.startswith("lr/")]
    values = groups or ([float(row["lr"])] if "lr" in row else [])
    if not values:
        return ""
    low, high = min(values), max(values)
    if format_lr(low) == format_lr(high):
        return f"lr {format_lr(high)}"
    return f"lr {format_lr(low)}..{format_lr(high)}"


def wrap(fields: list[str], width: int | None) -> list[str]:
    """The fields joined by two spaces, in lines of at most ``width - 1`` characters (the last
    column is left free: some terminals wrap on it), broken only between fields; continuation
    lines start with :data:`INDENT`. ``width=None``: one line. A field longer than a line
    stands on a line of its own."""
    if width is None:
        return [GAP.join(fields)]
    room = max(width - 1, 20)
    lines: list[str] = []
    line = ""
    for field in fields:
        if not line:
            line = (INDENT if lines else "") + field
        elif len(line) + len(GAP) + len(field) <= room:
            line += GAP + field
        else:
            lines.append(line)
            line = INDENT + field
    if line:
        lines.append(line)
    return lines


def _field(name: str, value: float, note: str = "") -> str:
    text = f"{name} {format_figure(name, value)}"
    return f"{text} {note}" if note else text


def _is_lr(name: str) -> bool:
    return name == "lr" or name.startswith("lr/")
