"""Class folder names -> the three canonical classes.

The Common Test calls them ``no/sphere/vort``; DeepLenseSim Model I-III ``no_sub/cdm/axion``.
"""

from __future__ import annotations

from darklens import CLASSES

#: folder name (lower case) -> label index into ``darklens.CLASSES``
CLASS_ALIASES: dict[str, int] = {
    "no": 0, "no_sub": 0,
    "sphere": 1, "cdm": 1, "subhalo": 1,
    "vort": 2, "axion": 2, "vortex": 2,
}

#: folder names that mark a split layout (ROOT/SPLIT/CLASS/*.npy)
SPLIT_NAMES = ("train", "val", "test")


def class_index(folder_name: str) -> int | None:
    """Label index of a class folder name, or None when the name is not a known class."""
    return CLASS_ALIASES.get(folder_name.lower())


def known_class_names() -> str:
    """The accepted folder names, for error messages."""
    by_class = {c: [a for a, i in CLASS_ALIASES.items() if i == k] for k, c in enumerate(CLASSES)}
    return "; ".join(f"{c}: {'|'.join(names)}" for c, names in by_class.items())
