"""The default corpus: short, simple stories generated from a small grammar with a fixed seed (no download, ever).

Why generated: the workbench must train offline on any machine, and a grammar gives text whose structure a tiny
model learns visibly within minutes (names recur within a story, sentences follow templates, stories end with a
moral). The output is deterministic: the same ``version`` and ``num_stories`` give byte-identical text on every
machine and Python version (only ``random.Random`` with an integer seed and ``choice``/``randrange``/``sample`` are
used).
Written for this project; license: CC0 / public domain (see datasets/README.md). Used by ``make demo`` and
notebooks/01_training.ipynb.
"""

from __future__ import annotations

import random

VERSION = "synthstories-v1"
DEFAULT_NUM_STORIES = 12_000  # ~5.2 MB of text
SEED = 1234

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo", "Zoe", "Sam", "Nora", "Jack", "Ella", "Finn",
         "Ruby", "Omar", "Ivy", "Kai", "Lucy", "Hugo"]
ANIMALS = ["cat", "dog", "bird", "frog", "rabbit", "fox", "duck", "bear", "mouse", "turtle"]
PLACES = ["the park", "the garden", "the forest", "the beach", "the farm", "the lake", "the hill", "the market",
          "the school", "the river"]
OBJECTS = ["a red ball", "a blue kite", "a small box", "a shiny stone", "a big apple", "an old book", "a green hat",
           "a wooden boat", "a yellow flower", "a little bell"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "curious", "proud", "angry"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "quiet"]
TIMES = ["One day", "One morning", "Once upon a time", "Last summer", "On a " + "{weather}" + " day"]
PROBLEMS = [
    ("the {obj} fell into the water", "{helper} used a long stick to get it back"),
    ("the {obj} got stuck in a tree", "{helper} climbed up and brought it down"),
    ("it started to rain very hard", "{helper} found a dry place under a big tree"),
    ("{hero} could not find the way home", "{helper} showed {hero} the path"),
    ("the {animal} was hungry", "{helper} shared some bread with the {animal}"),
    ("a strong wind took the {obj}", "{helper} ran fast and caught it"),
]
MORALS = [
    "It is good to help your friends.",
    "Sharing makes everyone happy.",
    "Being kind is always the right thing to do.",
    "When you work together, hard things become easy.",
    "Be brave, and ask for help when you need it.",
    "A good friend is the best thing to have.",
]


def _story(rng: random.Random) -> str:
    hero, helper = rng.sample(NAMES, 2)
    animal = rng.choice(ANIMALS)
    place = rng.choice(PLACES)
    obj = rng.choice(OBJECTS)
    obj_short = obj.split(" ", 1)[1]  # "a red ball" -> "red ball"
    weather = rng.choice(WEATHER)
    opening = rng.choice(TIMES).format(weather=weather)
    problem, fix = rng.choice(PROBLEMS)
    fmt = dict(hero=hero, helper=helper, animal=animal, obj=obj_short)
    feeling = rng.choice(FEELINGS)
    sentences = [
        f"{opening}, {hero} went to {place} with {obj}.",
        f"{hero} saw a {animal} there. The {animal} was {feeling}.",
        f"{hero} said, \"Hello, little {animal}! Do you want to play with me?\"",
    ]
    if rng.randrange(2):
        sentences.append(f"The weather was {weather}, and {hero} and the {animal} played for a long time.")
    sentences.append(f"Then {helper} came to {place} too.")
    sentences.append(f"Suddenly, {problem.format(**fmt)}.")
    sentences.append(f"{hero} felt {rng.choice(['sad', 'scared', 'worried'])}.")
    sentences.append(f"But {fix.format(**fmt)}.")
    glad = rng.choice(['happy', 'glad', 'proud'])
    sentences.append(f"\"Thank you, {helper}!\" said {hero}. {hero} was {glad} again.")
    if rng.randrange(3) == 0:
        sentences.append(f"At the end of the day, {hero}, {helper} and the {animal} went home together.")
    sentences.append(rng.choice(MORALS))
    return " ".join(sentences)


def generate_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = SEED) -> list[str]:
    """``num_stories`` stories, deterministic for a given (num_stories, seed). Each is one document."""
    if num_stories < 1:
        raise ValueError(f"num_stories must be >= 1, got {num_stories}")
    rng = random.Random(seed)
    return [_story(rng) for _ in range(num_stories)]
