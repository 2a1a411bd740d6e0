#!/usr/bin/env python
"""Write the bundled instruction dataset: reverse the order of a short list of words.

The skill is clear and checkable by exact match: the base SmolLM2-135M-Instruct echoes, reorders at random or
explains instead of answering with the reversed list, so before/after generations show the change. Every
example is produced from a fixed seed and a word list written for this project, so the files are reproducible:
``python scripts/make_bundled_dataset.py --check`` verifies that the committed files match this script.

Files (alpaca format, JSON Lines), under ``src/lorafam/data/bundled/``:
- ``reverse_words.jsonl``: 600 training examples (3–6 words each);
- ``reverse_words_test.jsonl``: 60 held-out examples whose word lists never occur in the training file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "lorafam" / "data" / "bundled"
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "lamp",
    "garden",
    "window",
    "pencil",
    "forest",
    "candle",
    "bridge",
    "mirror",
    "rabbit",
    "silver",
    "orange",
    "ladder",
    "pillow",
    "harbor",
    "meadow",
    "engine",
    "violin",
    "tiger",
    "button",
    "castle",
    "desert",
    "rocket",
    "basket",
    "planet",
    "kettle",
    "island",
    "carpet",
    "dragon",
    "feather",
    "guitar",
    "hammer",
    "jacket",
    "lemon",
    "marble",
    "needle",
    "ocean",
    "pepper",
    "quilt",
    "saddle",
    "tunnel",
    "valley",
    "wagon",
    "yogurt",
    "zebra",
    "anchor",
    "blanket",
    "cactus",
    "donkey",
    "eagle",
    "falcon",
    "glacier",
    "helmet",
    "igloo",
    "jungle",
    "koala",
    "lantern",
    "magnet",
    "noodle",
    "oyster",
    "parrot",
    "quartz",
    "ribbon",
    "shovel",
    "teapot",
    "umbrella",
    "velvet",
    "walnut",
    "barrel",
    "cherry",
    "dolphin",
    "ember",
    "fossil",
    "goblet",
    "hazel",
    "iris",
    "jasmine",
    "kiwi",
    "lobster",
    "maple",
    "nickel",
    "olive",
    "pebble",
    "raven",
    "spruce",
    "thistle",
    "tulip",
    "copper",
    "cobalt",
    "sparrow",
    "pigeon",
    "beetle",
    "spider",
    "turtle",
    "salmon",
    "walrus",
    "badger",
    "beaver",
    "bison",
    "camel",
    "cotton",
    "linen",
    "canvas",
    "paper",
    "ink",
    "chalk",
    "brick",
    "cement",
    "timber",
    "granite",
    "crystal",
    "pearl",
    "amber",
    "coral",
    "ivory",
    "piano",
    "drum",
    "flute",
    "harp",
    "trumpet",
    "cello",
    "banjo",
    "spoon",
    "fork",
    "plate",
    "bowl",
    "cup",
    "jug",
    "bottle",
    "kettle",
    "shelf",
    "table",
    "chair",
    "sofa",
    "bench",
    "stool",
    "desk",
    "door",
    "gate",
    "fence",
    "wall",
    "roof",
    "tower",
    "cabin",
    "tent",
    "hut",
    "barn",
    "mill",
    "well",
    "pond",
    "lake",
]
INSTRUCTIONS = (
    "Reverse the order of the words in this list.",
    "Write these words in reverse order.",
    "List the words from last to first.",
)
N_TRAIN, N_TEST = 600, 60


def _sample(rng: random.Random, seen: set[tuple[str, ...]]) -> dict[str, str]:
    vocab = sorted(set(WORDS))
    while True:
        words = tuple(rng.sample(vocab, rng.randint(3, 6)))
        if words not in seen:
            seen.add(words)
            break
    return {
        "instruction": rng.choice(INSTRUCTIONS),
        "input": ", ".join(words),
        "output": ", ".join(reversed(words)),
    }


def build() -> dict[str, list[dict[str, str]]]:
    """The two splits, deterministic."""
    rng = random.Random(20240611)
    seen: set[tuple[str, ...]] = set()
    test = [_sample(rng, seen) for _ in range(N_TEST)]
    train = [_sample(rng, seen) for _ in range(N_TRAIN)]
    return {"reverse_words.jsonl": train, "reverse_words_test.jsonl": test}


def _render(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the committed files instead of writing them")
    args = ap.parse_args()
    for name, rows in build().items():
        text = _render(rows)
        path = OUT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                print(f"{path}: differs from what {Path(__file__).name} generates", file=sys.stderr)
                return 1
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            print(f"wrote {path} ({len(rows)} examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
