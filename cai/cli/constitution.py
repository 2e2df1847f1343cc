"""`cai constitution validate|show|import`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("constitution", help="validate, show or import constitutions")
    csub = p.add_subparsers(dest="action", required=True)
    v = csub.add_parser("validate", help="check one or more constitution files")
    v.add_argument("files", nargs="+", help="constitution YAML/JSON files")
    s = csub.add_parser("show", help="print a constitution (bundled name or file)")
    s.add_argument("name", help="bundled name (harmless, helpful-honest) or file")
    i = csub.add_parser("import", help="convert Anthropic's or llm-swarm's JSON into a cai constitution")
    i.add_argument("file", help="CritiqueRevisionInstructions.json or an llm-swarm constitution")
    i.add_argument("--name", help="the constitution's name (default: from the file name)")
    i.add_argument("--out", help="write the YAML here (default: print it)")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from cai.constitution import import_constitution, load_constitution
    from cai.errors import UsageError

    if args.action == "validate":
        for path in args.files:
            c = load_constitution(path)
            print(f"{path}: ok ({c.name} v{c.version}: {len(c.principles)} principles, "
                  f"{len(c.preference_principles)} preference principles, {len(c.few_shot)} few-shot examples)")
    elif args.action == "show":
        print(load_constitution(args.name).to_yaml(), end="")
    else:
        if args.out and Path(args.out).resolve() == Path(args.file).resolve():
            raise UsageError(f"--out {args.out} is the file being imported; write the constitution elsewhere")
        text = import_constitution(args.file, name=args.name).to_yaml()
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"wrote {args.out}")
        else:
            print(text, end="")
    return 0
