"""`vista tune promote`: the settings where a sweep's ``best_params.yaml`` differs from params.yaml,
written into params.yaml (comments and layout kept) only when asked."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from vista.config import ParamsError, apply_override, validate_params


def promote(params_path: Path, best_path: Path, write: bool, console: Console | None = None) -> dict[str, tuple]:
    """The settings where ``best_params.yaml`` differs from ``params_path``; written into it (comments kept)
    only when ``write``."""
    from ruamel.yaml import YAML

    from vista.config import flatten, load_params

    console = console or Console()
    if not best_path.is_file():
        raise FileNotFoundError(f"{best_path}: no sweep result (run `vista tune` first)")
    best = validate_params(yaml.safe_load(best_path.read_text()))
    current = load_params(params_path)
    skip = ("tune.", "profiles.")
    a = {k: v for k, v in flatten(current.model_dump(mode="json")).items() if not k.startswith(skip)}
    b = {k: v for k, v in flatten(best.model_dump(mode="json")).items() if not k.startswith(skip)}
    diff = {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}
    if not diff:
        console.print(f"{params_path} already has the best values of {best_path}")
        return diff
    table = Table("setting", str(params_path), str(best_path), title="tune promote")
    for k, (old, new) in diff.items():
        table.add_row(k, repr(old), repr(new))
    console.print(table)
    if not write:
        console.print("nothing written (pass --write to apply these values to params.yaml)")
        return diff
    ry = YAML()  # round trip: comments and layout of params.yaml stay
    ry.preserve_quotes = True
    doc = ry.load(params_path.read_text())
    for key, (_, new) in diff.items():
        apply_override(doc, key, new)
    import io

    buf = io.StringIO()
    ry.dump(doc, buf)
    load_params_text(buf.getvalue(), params_path)  # validate before replacing the file
    params_path.write_text(buf.getvalue())
    console.print(f"wrote {len(diff)} value(s) into {params_path}")
    return diff


def load_params_text(text: str, where: Path) -> None:
    tree = yaml.safe_load(text)
    try:
        validate_params(tree)
    except ParamsError as err:
        raise ParamsError(f"{where} would become invalid: {err}") from None
