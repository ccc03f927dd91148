"""``traincraft show-batch``: a grid of a recipe's training images as the augmentation makes
them, without training.

Building the parser (and ``--help``) imports no torch; the work is imported inside
:func:`_show_batch`. A user mistake raises :class:`~traincraft.errors.TraincraftError`, which the
command line's error policy reports as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from traincraft.cli.policy import own_parser
from traincraft.errors import TraincraftError


def show_batch_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft show-batch RECIPE [key=value ...] [--output PNG] [--count N] [--split S]
    [--seed N]``: writes the PNG and prints its path; returns the exit code (0)."""
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    return _show_batch(args)


def _parser() -> argparse.ArgumentParser:
    parser = own_parser(
        "show-batch", "draw a grid of a recipe's training images as its data.augment makes them, without training",
        "example:\n  traincraft show-batch examples/digit_images.yaml --count 32 --output batch.png",
        recipe="a recipe file or template name",
    )
    parser.add_argument("--output", "-o", metavar="PNG", default="batch.png", help="where to write the grid (default: batch.png)")
    parser.add_argument("--count", type=int, default=16, help="images in the grid (default: 16)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="train",
                        help="whose images (default: train); only training batches are augmented in a run")
    parser.add_argument("--seed", type=int, help="the augmentation's random numbers (default: the recipe's seed)")
    return parser


def _show_batch(args: argparse.Namespace) -> int:
    from traincraft.augment import BatchTransform, preview, previewable
    from traincraft.datasets import split_size
    from traincraft.mapped import inputs_at
    from traincraft.recipe import load_recipe
    from traincraft.run import prepare_data

    if not 1 <= args.count <= 256:
        raise TraincraftError(f"--count must be between 1 and 256, got {args.count}")
    recipe = load_recipe(args.recipe, overrides=list(args.overrides))
    data = prepare_data(recipe)
    split = getattr(data, args.split)
    if split is None:
        raise TraincraftError(f"--split {args.split}: the recipe's data has no {args.split} split")
    if not previewable(split) or inputs_at(split, [0]).dtype.is_floating_point or len(data.input_shape) != 3:
        raise TraincraftError(f"show-batch draws images read from files (dataset: {{images: ...}}); the data "
                              f"{data.name!r} holds inputs of shape {tuple(data.input_shape)}, not decoded images")
    augment = recipe.data.augment if args.split == "train" else None
    seed = recipe.seed if args.seed is None else args.seed
    preview(BatchTransform(augment), split, args.output, count=args.count, seed=seed)
    shown = min(args.count, split_size(split))
    print(f"{shown} {args.split} images{' as data.augment makes them' if augment else ''}: {args.output}")
    return 0
