"""Write the bundled sample videos: normal training clips of scene A, test clips with one anomaly
each (between normal stretches), and their frame labels.

    python sample_videos/make_samples.py [--out DIR]

Deterministic: fixed seeds, one encoder thread. The labels are what `scenes.write_clip`
reports, i.e. the frames in which the anomalous object is visible: {clip: [[start, end], ...]},
0-based, end exclusive.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scenes import SCENE_A, write_clip  # beside this script

FRAMES = 180  # 18 s at 10 fps
TRAIN_SEEDS = (101, 102, 103, 104)
# (clip, seed, anomalies): each anomaly sits well inside the clip, so both ends stay normal. The
# lengths let each object cross the view once at a speed of its kind, entering at one edge and
# leaving at the other (scenes.py times it so), rather than vanishing mid-frame.
TESTS = (
    ("test_01.mp4", 201, [("fast", 70, 110)]),  # 160 px at ~4 px/frame
    ("test_02.mp4", 202, [("wrong_way", 50, 130)]),  # 120 px across the path at ~1.5 px/frame
    ("test_03.mp4", 203, [("intruder", 40, 140)]),  # 160 px over the grass at ~1.6 px/frame
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write train/, test/ and labels.json into (default: this script's folder)",
    )
    args = parser.parse_args(argv)

    train_dir, test_dir = args.out / "train", args.out / "test"
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(TRAIN_SEEDS, 1):
        path = train_dir / f"train_{i:02d}.mp4"
        write_clip(path, SCENE_A, FRAMES, [], seed)
        print(f"{path}: {FRAMES} frames, normal")

    labels: dict[str, list[list[int]]] = {}
    for name, seed, anomalies in TESTS:
        path = test_dir / name
        ranges = write_clip(path, SCENE_A, FRAMES, anomalies, seed)
        labels[name] = [[start, end] for start, end in ranges]
        print(f"{path}: {FRAMES} frames, {', '.join(k for k, _, _ in anomalies)} in {labels[name]}")

    # one clip per line: easy to read and to diff
    lines = [f"  {json.dumps(name)}: {json.dumps(ranges)}" for name, ranges in labels.items()]
    (args.out / "labels.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"{args.out / 'labels.json'}: {len(labels)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
