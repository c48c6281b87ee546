"""Entry point of the site gateway (edge-gateway): not built yet."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("the site gateway (edge-gateway) is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
