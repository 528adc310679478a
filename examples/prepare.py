"""Generate a synthetic two-class data set (two Gaussian blobs) into data/."""

import argparse
import csv
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=2000)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

rng = random.Random(args.seed)
os.makedirs("data", exist_ok=True)
with open("data/train.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["x1", "x2", "label"])
    for _ in range(args.rows):
        label = rng.random() < 0.5
        cx, cy = (1.5, 1.0) if label else (-1.0, -1.5)
        out.writerow([f"{rng.gauss(cx, 1.0):.5f}", f"{rng.gauss(cy, 1.0):.5f}", int(label)])
print(f"wrote {args.rows} rows to data/train.csv (run {os.environ.get('DSTACK_RUN', '-')})")
