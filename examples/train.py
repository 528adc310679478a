"""Train logistic regression with mini-batch SGD on data/train.csv; save checkpoint/."""

import argparse
import csv
import json
import math
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("--epoch", type=int, default=20)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()

with open("data/train.csv") as f:
    rows = [(float(r["x1"]), float(r["x2"]), int(r["label"])) for r in csv.DictReader(f)]
rng = random.Random(args.seed)
w = [0.0, 0.0, 0.0]  # bias, x1, x2


def predict(x1: float, x2: float) -> float:
    z = w[0] + w[1] * x1 + w[2] * x2
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


os.makedirs("checkpoint", exist_ok=True)
for epoch in range(1, args.epoch + 1):
    rng.shuffle(rows)
    for i in range(0, len(rows), args.batch_size):
        batch = rows[i : i + args.batch_size]
        grad = [0.0, 0.0, 0.0]
        for x1, x2, y in batch:
            err = predict(x1, x2) - y
            grad[0] += err
            grad[1] += err * x1
            grad[2] += err * x2
        w = [wi - args.lr * g / len(batch) for wi, g in zip(w, grad)]
    acc = sum((predict(x1, x2) > 0.5) == bool(y) for x1, x2, y in rows) / len(rows)
    print(f"epoch {epoch}/{args.epoch} accuracy {acc:.4f}", flush=True)
    with open("checkpoint/model.json", "w") as f:  # saved every epoch, synced as it goes
        json.dump({"weights": w, "epoch": epoch, "accuracy": acc, "args": vars(args)}, f)
print(f"saved checkpoint/model.json (accuracy {acc:.4f})")
