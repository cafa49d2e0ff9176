"""The Toxiproxy version the embedded server and the CLI imitate."""

from typing import Final

__all__ = ["VERSION"]

#: Toxiproxy's version string, as ``GET /version`` and ``-version`` report it.
VERSION: Final = "2.12.0"
