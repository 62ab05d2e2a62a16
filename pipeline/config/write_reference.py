"""``python -m pipeline.config.write_reference [PATH]``: the configuration reference page, printed or written to
PATH (``make docs-reference``).

Apart from :mod:`pipeline.config.reference` because the whole config
(:mod:`pipeline.config.settings`) imports that module for its error links.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config.reference import reference_page
from pipeline.config.settings import PipelineConfig


def main(argv: list[str]) -> None:
    """Print the page, or write it to the path given."""
    page = reference_page(PipelineConfig)
    if argv:
        Path(argv[0]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)


if __name__ == "__main__":
    main(sys.argv[1:])
