"""`cai --help` and the library's pure-logic modules load without torch, vllm or transformers."""

import subprocess
import sys

HEAVY = ("torch", "vllm", "transformers")


def test_help_and_pure_modules_import_no_heavy_library():
    code = (
        "import sys, cai, cai.cli, cai.constitution, cai.templating, cai.inputs, cai.runs.store, cai.generate.critique, "
        "cai.generate.run, cai.judge.compare, cai.judge.pairs, cai.judge.run, cai.judge.evaluate, cai.judge.export, cai.pipeline, cai.report\n"
        "cai.cli.build_parser().format_help()\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "cai", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "judge", "train", "run", "report", "eval", "constitution"):
        assert command in help_text.stdout
