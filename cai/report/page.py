"""`cai report RUN`: the page, `RUN/report/index.html`, its verdict first, then a section per stage output found.

    write_report("outputs/quickstart")      # the page's path
"""

from __future__ import annotations

import html
from pathlib import Path

from cai.errors import UsageError
from cai.report.data import generate_section, judge_section
from cai.report.evaluation import eval_section, verdict_section, w2s_section
from cai.report.training import online_section, training_section

STYLE = """body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;display:block;margin:1em 0;border:1px solid #eee}
.chain{border-left:3px solid #8172b3;padding-left:1em;margin:1em 0}.req{color:#555;font-size:90%}
section{margin-bottom:2.5em}#verdict li{margin:.4em 0}.good b{color:#2a7d3b}.bad b{color:#b3261e}
.unclear b{color:#8a6d00}"""
# Counts images that loaded, so a browser test (or a person) can see at a glance that none is broken.
SCRIPT = """window.addEventListener('load',function(){var ok=0,imgs=document.images;
for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images-loaded',ok+'/'+imgs.length);});"""


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report/index.html` and its PNG plots; returns the page's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run} is not a folder (a `cai run` output folder, such as outputs/quickstart)")
    from cai.registry import STAGES

    if not any((run / stage).exists() for stage in [*STAGES, "online", "w2s", "w2s.json"] if stage != "report"):
        raise UsageError(f"{run} holds no cai stage output to report on")
    folder = run / "report"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for build in (generate_section, judge_section, training_section, online_section, eval_section,
                  w2s_section):
        text, _ = build(run, folder)
        if text:
            sections.append(text)
    if not sections:
        raise UsageError(f"{run} holds no cai stage output to report on")
    verdict = verdict_section(run)
    if verdict:
        sections.insert(0, verdict)
    title = f"cai report: {run.name}"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
            f"<script>{SCRIPT}</script></body></html>")
    (folder / "index.html").write_text(page, encoding="utf-8")
    return folder / "index.html"
