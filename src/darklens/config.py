"""Configs: dataclasses with defaults in code, overridable by ``--set key=value``.

The resolved config is saved beside every output as YAML (like timm's ``args.yaml``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import yaml

from darklens.errors import DarklensError


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """Parse ``["a.b=1", "c=x"]`` into ``{"a.b": "1", "c": "x"}`` (values stay strings)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DarklensError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def coerce(value: Any, like: Any, key: str) -> Any:
    """Convert a string ``value`` to the type of ``like`` (the default), or raise one line."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(like, bool):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
        if isinstance(like, (list, tuple)):
            parsed = yaml.safe_load(value)
            if not isinstance(parsed, (list, tuple)):
                raise ValueError(value)
            return type(like)(coerce(v, like[0], key) if like else v for v in parsed)
        if like is None:
            return yaml.safe_load(value)
        return value
    except (ValueError, yaml.YAMLError):
        # a malformed YAML list ("[0.1,") is as much a wrong value as "abc" for an int
        raise DarklensError(f"--set {key}={value}: expected {_a_type(like)}") from None


def _a_type(like: Any) -> str:
    """``"an int (default 3)"``: the type of ``like`` with its article, for error messages."""
    if like is None:
        return "a YAML value"
    # tuples hold ranges like (0.01, 0.03); on the command line they are YAML lists
    name = "list" if isinstance(like, (list, tuple)) else type(like).__name__
    article = "an" if name[0] in "aeiou" else "a"
    return f"{article} {name} (default {like!r})"


def _field_type_hint(cls: type, name: str) -> Any:
    try:
        return typing.get_type_hints(cls).get(name)
    except Exception:  # forward refs we cannot resolve: fall back to the default's type
        return None


def apply_overrides(config: Any, overrides: dict[str, Any], *, what: str = "config") -> Any:
    """Return a copy of dataclass ``config`` with dotted ``overrides`` applied.

    Unknown keys and values of the wrong type raise :class:`DarklensError`.
    """
    for dotted, value in overrides.items():
        config = _set_path(config, dotted.split("."), value, dotted, what)
    return config


def _set_path(obj: Any, parts: list[str], value: Any, dotted: str, what: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise DarklensError(f"--set {dotted}: {what} has no nested key here")
    names = [f.name for f in dataclasses.fields(obj)]
    head = parts[0]
    if head not in names:
        raise DarklensError(
            f"--set {dotted}: unknown {what} key {head!r} (known: {', '.join(names)})"
        )
    current = getattr(obj, head)
    if len(parts) > 1:
        new = _set_path(current, parts[1:], value, dotted, what)
    else:
        new = coerce(value, current, dotted)
    return dataclasses.replace(obj, **{head: new})


def to_dict(config: Any) -> dict:
    """A plain, YAML-safe dict of a (nested) dataclass."""
    return _plain(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return x.item()
    return x


def usual_permissions(path: str | Path) -> None:
    """Give a ``mkstemp`` file (0600) the mode a plain ``open`` would (0666 less the umask), so
    colleagues who can read the folder can read the run too."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a later ``mkdir -p`` builds on)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_file(path: str | Path) -> Path:
    """Refuse an output file path that cannot be written, before any work is done.

    Raises :class:`DarklensError` naming the path when it is a folder, or when the folder it
    would go in is a file or is not writable; missing parent folders are fine (they are made).
    """
    path = Path(path)
    if path.is_dir():
        raise DarklensError(f"{path}: is a folder; give a file path to write")
    _check_parent(path)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Refuse an output folder path that cannot be created or written, before any work is done.

    Raises :class:`DarklensError` naming the path when it exists but is not a folder, or when it
    cannot be made (an ancestor is a file, or is not writable).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DarklensError(f"{path}: exists and is not a folder; give a folder path to write")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise DarklensError(f"{path}: folder is not writable")
        return path
    _check_parent(path)
    return path


def _check_parent(path: Path) -> None:
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise DarklensError(f"{path}: cannot write there, {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise DarklensError(f"{path}: cannot write there, folder {base} is not writable")


def save_yaml(path: str | Path, data: Any) -> None:
    """Save ``data`` (dict or dataclass) as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(data), sort_keys=False))


def load_yaml(path: str | Path) -> dict:
    """Load a YAML mapping with ``safe_load``; a bad file is a one-line error."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DarklensError(f"{path}: cannot read YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DarklensError(f"{path}: expected a YAML mapping")
    return data
