"""Write the default corpus (synthstories-v1) to a text file, one story per paragraph, to read or reuse it.

    python datasets/generate_default_corpus.py datasets/synthstories-v1.txt [--stories 12000]

The trainer never needs this file: ``load_corpus("default")`` generates the same text in memory.
"""

import argparse
import sys
from pathlib import Path

# run from a checkout without an installed package too (python datasets/generate_default_corpus.py ...)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.data.stories import DEFAULT_NUM_STORIES, VERSION, generate_stories  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the text file to write (its folder is created)")
    parser.add_argument("--stories", type=int, default=DEFAULT_NUM_STORIES, help="how many stories (>= 1)")
    args = parser.parse_args(argv)
    # checked before the ~10 s of generating: a bad value or an unwritable path used to end in a traceback after it
    if args.stories < 1:
        parser.error(f"--stories must be >= 1, got {args.stories}")
    if args.out.is_dir():
        parser.error(f"{args.out} is a folder; give a file name, e.g. {args.out / 'synthstories-v1.txt'}")
    try:  # the file is opened before the stories are generated, so an unwritable path fails at once
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as file:
            stories = generate_stories(args.stories)
            file.write("\n\n".join(stories) + "\n")
    except OSError as exc:
        parser.error(f"cannot write {args.out}: {exc.strerror or exc}")
    print(f"{VERSION}: {len(stories)} stories, {args.out.stat().st_size / 1e6:.1f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
