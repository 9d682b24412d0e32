"""`python -m tally.api.openapi > schemas/openapi.json`: the checked-in OpenAPI document.

The document is built in `tally.api.openapi_document`, which the app imports;
this entry builds an app to get it, so the two modules do not import each other.
"""

from __future__ import annotations

import sys

from tally.api.app import create_app
from tally.api.openapi_document import render
from tally.config import Settings


def main() -> None:
    sys.stdout.write(render(create_app(Settings()).openapi()))


if __name__ == "__main__":
    main()
