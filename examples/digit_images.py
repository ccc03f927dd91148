"""Write scikit-learn's handwritten digits as PNG files in class folders, the way users' own
images come, for the image-folder recipe next to this script:

    python examples/digit_images.py                # writes digit-images/train/<digit>/NNNN.png
    traincraft fit examples/digit_images.yaml

Each 8x8 digit (grey levels 0-16) is upscaled to 32x32 with Pillow's bicubic filter. No network:
the digits ship with scikit-learn.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digit-images", help="the folder to write (default: digit-images)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32)")
    args = parser.parse_args()
    digits = load_digits()
    root = Path(args.out) / "train"
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(np.uint8(image * (255 / 16)), mode="L")
        pixels.resize((args.size, args.size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    print(f"wrote {len(digits.images)} images in {len(set(digits.target))} class folders under {root}")


if __name__ == "__main__":
    main()
