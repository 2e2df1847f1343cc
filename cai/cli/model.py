"""`cai model prepare` (convert the embedded default model, or a .gguf, once) and `cai model path` (where a model
string resolves, without converting anything)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("model", help="prepare the embedded default model or resolve a model string")
    msub = p.add_subparsers(dest="action", required=True)
    for action, text in (("prepare", "convert the embedded model (or a .gguf) into a checkpoint once; print it"),
                         ("path", "print where a model string resolves (no conversion)")):
        m = msub.add_parser(action, help=text)
        m.add_argument("model", nargs="?", default=None, help="model string (default: the embedded model)")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from cai.models import model_path, resolve_model

    print(resolve_model(args.model) if args.action == "prepare" else model_path(args.model))
    return 0
