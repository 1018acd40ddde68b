"""Write a subset of Fashion-MNIST as an ImageFolder (PNG files) for the README example.

    python experiments/make_fmnist_imagefolder.py --out fmnist_images --train 2000 --test 500

Layout: OUT/train/<class>/<n>.png and OUT/test/<class>/<n>.png (grey 28x28), the first
``--train`` / ``--test`` images of the official splits, read from the Debian package
dataset-fashion-mnist (or --data-root). ``archdisc discover --data OUT`` then reads it like
any user's image folder (validation: 10% of OUT/train, drawn by seed).

Measures nothing and writes no results file: it prepares the input of the README example
(RESULTS.md section 11).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from archdisc.data.files import _find_idx_files, read_idx

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--data-root", type=Path, default=None)
    args = p.parse_args(argv)
    files = _find_idx_files("fashion-mnist", args.data_root)
    for split, n in (("train", args.train), ("test", args.test)):
        x, y = read_idx(files[f"{split}_x"])[:n], read_idx(files[f"{split}_y"])[:n]
        for i, (img, label) in enumerate(zip(x, y)):
            folder = args.out / split / CLASSES[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(folder / f"{i:05d}.png")
        print(f"{split}: {len(x)} images in {args.out / split}")


if __name__ == "__main__":
    main()
