"""Complete training recipes with their own loops (``python -m nnx.recipes.<name>``, or
``nnx-train --recipe <name> [recipe options]``)."""
from __future__ import annotations

import importlib

RECIPES = ("airbench94",)


def recipe_argument(argv):
    """``(name, remaining argv)`` when ``argv`` holds ``--recipe NAME`` or
    ``--recipe=NAME``, else ``(None, argv)``."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--recipe":
            if i + 1 == len(argv):
                raise SystemExit(f"nnx-train: --recipe needs a name: one of {RECIPES}")
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--recipe="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def run_recipe(name, argv):
    """Run recipe ``name``'s command line on ``argv``; returns its result dict."""
    if name not in RECIPES:
        raise SystemExit(f"nnx-train: unknown recipe {name!r}; choose one of {RECIPES}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.main(argv, prog=f"nnx-train --recipe {name}")
