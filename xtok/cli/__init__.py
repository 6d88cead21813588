"""The single entry point: ``xtok <verb> ...``. Each verb validates its input and calls one library function.

``base`` holds the app and its helpers; ``recipes`` and ``models`` register their commands on it when imported
(in the order ``xtok --help`` lists them).
"""

# isort: off
from xtok.cli import recipes  # noqa: F401  (eval, transplant, distill, heal, align, draft-check, ensemble, run)
from xtok.cli import models  # noqa: F401  (models list / prepare, validate, ls)
# isort: on
from xtok.cli.base import USER_ERRORS, _main, app, main

__all__ = ["USER_ERRORS", "_main", "app", "main"]
