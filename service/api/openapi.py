"""Print the service's OpenAPI document: `python -m service.api.openapi > FILE`.

The committed snapshot (tests/service/openapi_snapshot.json) is regenerated with
`python -m service.api.openapi --write`, deliberately, when the HTTP contract changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).resolve().parents[2] / "tests/service/api/openapi_snapshot.json"


def openapi_document() -> dict[str, Any]:
    from service.api.app import create_app
    from service.settings import Settings

    return create_app(Settings()).openapi()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render(openapi_document())
    if args == ["--write"]:
        SNAPSHOT.write_text(text, encoding="utf-8")
        print(f"wrote {SNAPSHOT}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
