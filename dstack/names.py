"""Names: run names (`adjective-animal-N`), "did you mean" suggestions, and slugs (names
made safe for a cloud)."""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Iterable

ADJECTIVES = (
    "able", "bold", "brave", "bright", "calm", "clever", "cool", "crisp", "curious", "daring",
    "eager", "fair", "fancy", "fast", "fierce", "fond", "gentle", "glad", "grand", "happy",
    "hardy", "honest", "jolly", "keen", "kind", "lively", "lucky", "merry", "mighty", "modest",
    "neat", "nimble", "noble", "proud", "quick", "quiet", "rapid", "ready", "shiny", "silent",
    "smart", "snappy", "steady", "sunny", "swift", "tidy", "vivid", "warm", "wise", "witty",
)
ANIMALS = (
    "ant", "badger", "bat", "bear", "beaver", "bee", "bison", "camel", "cat", "cobra",
    "crane", "crow", "deer", "dingo", "dog", "dolphin", "donkey", "eagle", "eel", "falcon",
    "ferret", "finch", "fox", "frog", "gecko", "goat", "goose", "hawk", "heron", "horse",
    "ibis", "jackal", "koala", "lemur", "lion", "lizard", "llama", "lynx", "mole", "moose",
    "newt", "otter", "owl", "panda", "parrot", "puma", "rabbit", "raven", "seal", "shark",
    "sloth", "snail", "swan", "tiger", "toad", "turtle", "walrus", "wolf", "yak", "zebra",
)
RUN_NAME = re.compile(r"^[a-z]+-[a-z]+-\d+$")


def run_name_candidates(rng: random.Random | None = None) -> Iterable[str]:
    """Endless candidate names `adjective-animal-N` for one pair, N counting up from 1.

    The caller claims each candidate atomically in the store until one is free, which keeps
    names unique even when runs start at the same moment.
    """
    rng = rng or random.SystemRandom()
    prefix = f"{rng.choice(ADJECTIVES)}-{rng.choice(ANIMALS)}"
    n = 1
    while True:
        yield f"{prefix}-{n}"
        n += 1


def slug(text: str, limit: int = 63, *, squeeze: bool = True) -> str:
    """`text` as a cloud-safe name part: lowercase letters, digits and `-`, at most `limit`,
    neither starting nor ending with `-`. `squeeze` turns runs of `-` into one; without it a
    name stays distinct from one that differs only there (a bucket's: `a--b` and `a-b`)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if squeeze:
        cleaned = re.sub(r"-{2,}", "-", cleaned)
    return cleaned[:limit].strip("-") or "x"


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The one of `choices` closest to `word` (similarity at least `cutoff`), or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """`Did you mean "x"?` for the closest of `choices`, or None when nothing is close."""
    close = closest(word, choices)
    return f'Did you mean "{close}"?' if close else None
