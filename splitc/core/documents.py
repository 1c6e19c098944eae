"""Reading the JSON document that marks a splitc directory (split.json, manifest.json).

Both directories are refused the same way when they are missing, foreign, corrupt or from
another schema: one line naming the file and the command that writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from splitc.core.errors import SplitcError


def read_document(folder: str | os.PathLike, filename: str, what: str, command: str,
                  schema: int) -> dict[str, Any]:
    """The parsed ``folder/filename``; ``what`` names the directory ("split directory"),
    ``command`` the splitc command that writes it ("split RUN_DIR --out DIR")."""
    folder = Path(folder)
    path = folder / filename
    rerun = command.split()[0]
    if not folder.is_dir():
        raise SplitcError(f"{what} {folder} does not exist; create it with `splitc {command}`.")
    if not path.is_file():
        article = "an" if what[0] in "aeiou" else "a"
        raise SplitcError(f"{folder} is not {article} {what} (no {filename}); create one with "
                          f"`splitc {command}`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitcError(f"{path} is corrupt ({exc}); run `splitc {rerun}` again.") from None
    found = data.get("schema") if isinstance(data, dict) else None
    if found != schema:
        raise SplitcError(f"{path} has schema {found!r}, this splitc reads schema {schema}; run "
                          f"`splitc {rerun}` again with this version.")
    return data
