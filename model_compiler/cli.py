"""Entry point of the model compiler (model-compiler): not built yet."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("the model compiler (model-compiler) is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
