"""Write the default corpus (synthstories-v1) to a text file, one story per paragraph, to read or reuse it.

    python datasets/generate_default_corpus.py datasets/synthstories-v1.txt [--stories 12000]

The trainer never needs this file: ``load_corpus("default")`` generates the same text in memory.
"""

import argparse
from pathlib import Path

from workbench.data.stories import DEFAULT_NUM_STORIES, VERSION, generate_stories

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--stories", type=int, default=DEFAULT_NUM_STORIES)
    args = parser.parse_args()
    stories = generate_stories(args.stories)
    args.out.write_text("\n\n".join(stories) + "\n", encoding="utf-8")
    print(f"{VERSION}: {len(stories)} stories, {args.out.stat().st_size / 1e6:.1f} MB -> {args.out}")
