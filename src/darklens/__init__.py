"""darklens: dark-matter substructure in strong gravitational lenses."""

__version__ = "0.1.0"

#: Canonical class names, in label order (0, 1, 2).
CLASSES = ("no", "sphere", "vort")
