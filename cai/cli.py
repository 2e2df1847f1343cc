"""The `cai` command line: thin wrappers that parse options, load config and call the library.

    cai generate --limit 16            # SL-CAI critique -> revision data on the embedded default model
    cai export outputs/<run>           # (re)write a run's datasets
    cai constitution validate FILE     # check a constitution
    cai model prepare                  # convert the embedded default model once

Heavy libraries (torch, vllm) are imported only inside the commands that need them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def _engine_options(parser: argparse.ArgumentParser, prefix: str = "engine") -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--model", dest=f"{prefix}.model", help="hub id, checkpoint folder or .gguf (default: embedded SmolLM2-135M-Instruct)")
    group.add_argument("--dtype", dest=f"{prefix}.dtype", help="float32 (CPU default), bfloat16, auto, ...")
    group.add_argument("--max-model-len", dest=f"{prefix}.max_model_len", type=int)
    group.add_argument("--tensor-parallel-size", dest=f"{prefix}.tensor_parallel_size", type=int)
    group.add_argument("--gpu-memory-utilization", dest=f"{prefix}.gpu_memory_utilization", type=float)
    group.add_argument("--enforce-eager", dest=f"{prefix}.enforce_eager", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--trust-remote-code", dest=f"{prefix}.trust_remote_code", action="store_true", default=None,
                       help="run code shipped with a hub model (off by default)")
    group.add_argument("--engine-arg", dest=f"{prefix}.extra", action="append", metavar="KEY=VALUE",
                       help="any other vLLM engine argument (value parsed as YAML), repeatable")
    group.add_argument("--engine", dest=f"{prefix}.backend", choices=["vllm", "openai"],
                       help="vllm (in-process, default) or openai (OpenAI-compatible servers)")
    group.add_argument("--base-url", dest=f"{prefix}.base_urls", action="append", metavar="URL",
                       help="an OpenAI-compatible endpoint such as http://host:8000/v1; repeat for several servers")
    group.add_argument("--api-key-env", dest=f"{prefix}.openai.api_key_env", help="variable holding the API key")
    group.add_argument("--api-key-file", dest=f"{prefix}.openai.api_key_file", help="file holding the API key")
    group.add_argument("--max-concurrency-per-server", dest=f"{prefix}.openai.max_concurrency_per_server", type=int)


def _generate_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="critique -> revision chains into an SFT dataset (SL-CAI)")
    p.add_argument("--config", help="YAML file of settings; options given here override it")
    p.add_argument("--constitution", help="bundled name (harmless, helpful-honest) or YAML path")
    p.add_argument("--prompts", help="bundled set (red-team, benign), a .jsonl/.json/.csv/.parquet file, a datasets folder or hub id")
    p.add_argument("--prompt-column", dest="prompt_column")
    p.add_argument("--split")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--rounds", type=int, help="critique -> revision rounds (default 1)")
    p.add_argument("--few-shot", dest="few_shot", type=int, help="how many few-shot examples to prepend (default all)")
    p.add_argument("--seed", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", dest="top_p", type=float)
    p.add_argument("--max-new-tokens", dest="max_new_tokens_all", type=int, help="for every stage")
    for stage in ("initial", "critique", "revision"):
        p.add_argument(f"--max-new-tokens-{stage}", dest=f"max_new_tokens.{stage}", type=int)
    p.add_argument("--early-stop", dest="early_stop", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-failure-rate", dest="max_failure_rate", type=float)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--templates", help="folder of stage templates replacing prompts/templates")
    p.add_argument("--no-progress", action="store_true")
    _engine_options(p)


def _judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--constitution", help="where the preference principles come from (default harmless)")
    p.add_argument("--principles", dest="principles_per_pair", type=int, help="M principles per pair (default 4)")
    p.add_argument("--judge-few-shot", dest="judge_few_shot", type=int, help="judge examples to prepend (default 0)")
    p.add_argument("--seed", type=int)
    p.add_argument("--cot", action=argparse.BooleanOptionalAction, default=None, help="reason before answering")
    p.add_argument("--cot-max-tokens", dest="cot_max_tokens", type=int)
    p.add_argument("--cot-band", dest="cot_band", type=float, nargs=2, metavar=("LOW", "HIGH"))
    p.add_argument("--min-option-mass", dest="min_option_mass", type=float)
    p.add_argument("--top-logprobs", dest="top_logprobs", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--templates", help="folder of templates replacing prompts/templates")


def _judge_parser(sub: Any) -> None:
    p = sub.add_parser("judge", help="AI-judged preference pairs from runs, samples or a pairs file (RL-CAI)")
    p.add_argument("source", nargs="?", help="generate run folder, pairs file (--strategy file) or prompt set (--strategy sampled)")
    p.add_argument("--config", help="YAML file of settings; options given here override it")
    p.add_argument("--strategy", choices=["revision-vs-initial", "revisions", "sampled", "file"])
    _judge_options(p)
    p.add_argument("--samples-per-prompt", dest="samples_per_prompt", type=int, help="K for --strategy sampled")
    p.add_argument("--pairing", choices=["all", "reference"])
    p.add_argument("--policy-model", dest="policy_engine.model", help="model that samples responses (default: the judge)")
    p.add_argument("--policy-temperature", dest="policy_temperature", type=float)
    p.add_argument("--policy-max-new-tokens", dest="policy_max_new_tokens", type=int)
    p.add_argument("--prompt-column", dest="prompt_column")
    p.add_argument("--split")
    p.add_argument("--min-confidence", dest="min_confidence", type=float, help="export only pairs with p_chosen >= this")
    p.add_argument("--min-valid-principles", dest="min_valid_principles", type=int,
                   help="principles that must be judged validly in both orders for a pair to become a label (default 1)")
    p.add_argument("--drop-inconsistent", dest="drop_inconsistent", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-failure-rate", dest="max_failure_rate", type=float)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--no-progress", action="store_true")
    _engine_options(p)


def _eval_parser(sub: Any) -> Any:
    p = sub.add_parser("eval", help="measure a judge (cai eval judge FILE)")
    esub = p.add_subparsers(dest="action", required=True)
    j = esub.add_parser("judge", help="accuracy, consistency and calibration of a judge on labelled pairs")
    j.add_argument("file", nargs="?", default=None, help="labelled pairs (prompt, chosen, rejected); default: the shipped set")
    _judge_options(j)
    j.add_argument("--out", dest="report_out", help="also write the report as JSON here")
    _engine_options(j)
    return esub


def _train_parser(sub: Any) -> None:
    """Options generated from TrainConfig's fields, so the CLI and the config file always agree."""
    import typing

    from cai.train.config import CONFIGS

    p = sub.add_parser("train", help="train on cai data: sft, dpo, rm or ppo (bundled trainer)")
    tsub = p.add_subparsers(dest="action", required=True)
    for task, text in (("sft", "supervised fine-tuning on `messages`"),
                       ("dpo", "preference optimisation (sigmoid, ipo or soft labels)"),
                       ("rm", "a reward model on preference pairs (Bradley-Terry, soft labels)"),
                       ("ppo", "PPO of a policy against a reward model, KL-penalised to a reference")):
        t = tsub.add_parser(task, help=text)
        t.add_argument("--config", help="YAML file of settings; options given here override it")
        for name, field in CONFIGS[task].model_fields.items():
            flag = "--" + name.replace("_", "-")
            kind = field.annotation
            origin, args = typing.get_origin(kind), typing.get_args(kind)
            default = "" if field.is_required() else f" (default: {field.get_default(call_default_factory=True)})"
            text = ((field.description or name.replace("_", " ")).replace("%", "%%") + default).strip()
            if kind is bool:
                t.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
            elif origin is list:
                inner = typing.get_args(args[0]) if typing.get_origin(args[0]) is typing.Literal else None
                t.add_argument(flag, dest=name, nargs="+", choices=inner or None, help=text)
            elif origin is typing.Literal:
                t.add_argument(flag, dest=name, choices=list(args), help=text)
            else:
                scalar = next((a for a in (args or (kind,)) if a in (int, float, str)), str)
                t.add_argument(flag, dest=name, type=scalar, help=text)


def _run_parsers(sub: Any, eval_sub: Any) -> None:
    p = sub.add_parser("run", help="a whole pipeline from a recipe: generate, judge, train, eval, report")
    p.add_argument("recipe", help="recipe YAML (bundled: quickstart, gpu-8b)")
    p.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("report", help="write RUN/report/index.html with its plots")
    r.add_argument("run", help="a `cai run` folder")
    m = eval_sub.add_parser("model", help="harmlessness win-rate and over-refusal of a trained model vs its base")
    m.add_argument("--trained", required=True)
    m.add_argument("--base", help="the base model (default: the embedded one)")
    m.add_argument("--out", dest="report_out", required=True, help="folder for results.json")
    m.add_argument("--harmful-limit", type=int)
    m.add_argument("--harmful-start", type=int)
    m.add_argument("--benign-limit", type=int)
    m.add_argument("--principles", dest="principles_per_pair", type=int)
    m.add_argument("--max-new-tokens", type=int)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from cai.yaml_safe import YAMLInputError, load_yaml

    skip = {"command", "config", "no_progress", "func", "max_new_tokens_all", "action", "file", "report_out"}
    out = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if getattr(args, "max_new_tokens_all", None) is not None:
        for stage in ("initial", "critique", "revision"):
            out.setdefault(f"max_new_tokens.{stage}", args.max_new_tokens_all)
    for key in [k for k in out if k.endswith(".extra")]:
        extra = {}
        for item in out[key]:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"cai: --engine-arg expects KEY=VALUE, got {item!r}")
            try:
                extra[name.strip()] = load_yaml(value, f"--engine-arg {name.strip()}")
            except YAMLInputError as e:
                raise SystemExit(f"cai: {e}") from None
        out[key] = extra
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from cai.config import GenerateConfig, load_config
    from cai.generate import generate

    config = load_config(GenerateConfig, args.config, _overrides(args))
    summary = asyncio.run(generate(config, progress=not args.no_progress))
    print(summary.text())
    print(f"datasets: {summary.run_dir / 'export'}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from cai.config import load_config
    from cai.judge_run import JudgeConfig, judge_run

    config = load_config(JudgeConfig, args.config, _overrides(args))
    summary = asyncio.run(judge_run(config, progress=not args.no_progress))
    print(f"run: {summary.run_dir}\npairs: {summary.total} ({summary.skipped} already done, {summary.ok} labelled now, "
          f"{summary.errors} invalid or failed) in {summary.seconds:.1f} s")
    for reason, n in sorted(summary.error_reasons.items(), key=lambda x: -x[1]):
        print(f"  x{n}: {reason}")
    print(f"datasets: {summary.run_dir / 'export'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.action == "model":
        return cmd_eval_model(args)
    from cai.config import load_config
    from cai.engines import create_engine
    from cai.judge_eval import evaluate_judge
    from cai.judge_run import JudgeConfig, settings_of
    from cai.pairs import pairs_from_file
    from cai.resources import data_dir

    path = args.file or str(data_dir("prompts") / "judge-eval.jsonl")
    # the same validation as `cai judge`, all before any engine starts
    config = load_config(JudgeConfig, None, {**_overrides(args), "source": path, "strategy": "file"})
    pairs, problems = pairs_from_file(path, config.limit)
    if not pairs:
        raise ValueError(f"{path}: no usable labelled pairs ({len(problems)} rows rejected"
                         + (f", first: {problems[0].reason}" if problems else "") + ")")
    if args.report_out:
        _check_writable(Path(args.report_out))

    async def run():
        engine = create_engine(config.engine)
        try:
            return await evaluate_judge(engine, path, config.principles_per_pair, config.constitution,
                                        settings_of(config), config.seed, config.limit, config.judge_few_shot)
        finally:
            await engine.close()

    report = asyncio.run(run())
    print(format_judge_report(report))
    if args.report_out:
        Path(args.report_out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def _check_writable(target: Path) -> None:
    """A file path that can be written: not a folder, in a folder that exists."""
    if target.is_dir():
        raise ValueError(f"--out {target} is a folder; give a file name such as {target / 'judge-eval.json'}")
    if not target.parent.is_dir():
        raise ValueError(f"--out {target}: the folder {target.parent} does not exist")


def format_judge_report(report: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = ["accuracy", "position_consistency", "brier", "ece", "invalid_rate", "valid"]
    lines = [f"judge: {report['judge_model']}  file: {report['file']}  pairs: {report['pairs']}  "
             f"principles per pair: {report['principles_per_pair']}",
             f"{'variant':<20}" + "".join(f"{c:>22}" for c in columns)]
    for name, m in report["metrics"].items():
        lines.append(f"{name:<20}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
    for name, m in report["by_category"].items():
        lines.append(f"  {name:<18}" + "".join(f"{fmt(m[c]):>22}" for c in columns))
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from cai.config import load_config
    from cai.train import CONFIGS, run_training

    config = load_config(CONFIGS[args.action], args.config, _overrides(args))
    final = run_training(args.action, config)
    print(json.dumps({"out": config.out, **{k: round(v, 6) if isinstance(v, float) else v for k, v in final.items()}}))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from cai.train.reward import score_file

    summary = score_file(args.reward_model, args.data, args.score_out, args.batch_size, args.max_length, args.split,
                         args.trust_remote_code)
    print(json.dumps(summary))
    return 0


def cmd_eval_model(args: argparse.Namespace) -> int:
    from cai.model_eval import EvalConfig, evaluate_models

    fields = {k: v for k, v in vars(args).items() if k in EvalConfig.model_fields and v is not None}
    results = asyncio.run(evaluate_models(EvalConfig(**fields), args.report_out))
    print(json.dumps(results, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cai.pipeline import Pipeline, load_recipe

    pipeline = Pipeline(load_recipe(args.recipe))
    outcome = asyncio.run(pipeline.execute(progress=not args.no_progress))
    for stage, what in outcome.items():
        print(f"{stage}: {what}")
    results = pipeline.run / "eval" / "results.json"
    if results.exists():
        data = json.loads(results.read_text())
        print(f"harmlessness win-rate: {data['harmlessness']['win_rate']} (95% CI {data['harmlessness']['ci95']}); "
              f"over-refusal base {data['over_refusal']['base']['refusal_rate']}, "
              f"trained {data['over_refusal']['trained']['refusal_rate']}")
    if (pipeline.run / "report" / "index.html").exists():
        print(f"report: {pipeline.run / 'report' / 'index.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cai.report import write_report

    print(write_report(args.run))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cai.export import export_generate_run, export_judge_run
    from cai.store import read_manifest

    kind = read_manifest(Path(args.run) / "manifest.json").get("kind")
    counts = (export_judge_run if kind == "judge" else export_generate_run)(args.run)
    print(json.dumps({"export": str(Path(args.run) / "export"), "rows": counts}))
    return 0


def cmd_constitution(args: argparse.Namespace) -> int:
    from cai.constitution import import_constitution, load_constitution

    if args.action == "validate":
        for path in args.files:
            c = load_constitution(path)
            print(f"{path}: ok ({c.name} v{c.version}: {len(c.principles)} principles, "
                  f"{len(c.preference_principles)} preference principles, {len(c.few_shot)} few-shot examples)")
    elif args.action == "show":
        print(load_constitution(args.name).to_yaml(), end="")
    elif args.action == "import":
        if args.out and Path(args.out).resolve() == Path(args.file).resolve():
            raise ValueError(f"--out {args.out} is the file being imported; write the constitution elsewhere")
        text = import_constitution(args.file, name=args.name).to_yaml()
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"wrote {args.out}")
        else:
            print(text, end="")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from cai.models import resolve_model

    print(resolve_model(args.model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI data and models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _judge_parser(sub)
    eval_sub = _eval_parser(sub)
    _run_parsers(sub, eval_sub)
    _train_parser(sub)

    p = sub.add_parser("score", help="score (prompt, response) rows with a reward model from `cai train rm`")
    p.add_argument("--reward-model", required=True, help="a `cai train rm` folder")
    p.add_argument("--data", required=True, help="rows with prompt + response, prompt + chosen + rejected, or messages")
    p.add_argument("--out", dest="score_out", required=True, help="JSONL: each row with its score(s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--split", default="train")
    p.add_argument("--trust-remote-code", action="store_true")

    p = sub.add_parser("export", help="write a run's datasets, JSONL files and dataset card")
    p.add_argument("run", help="run folder, e.g. outputs/<run>")

    p = sub.add_parser("constitution", help="validate, show or import constitutions")
    csub = p.add_subparsers(dest="action", required=True)
    v = csub.add_parser("validate", help="check one or more constitution files")
    v.add_argument("files", nargs="+")
    s = csub.add_parser("show", help="print a constitution (bundled name or file)")
    s.add_argument("name")
    i = csub.add_parser("import", help="convert Anthropic's or llm-swarm's JSON into a cai constitution")
    i.add_argument("file")
    i.add_argument("--name")
    i.add_argument("--out")

    p = sub.add_parser("model", help="prepare the embedded default model or resolve a model string")
    msub = p.add_subparsers(dest="action", required=True)
    for action in ("prepare", "path"):
        m = msub.add_parser(action)
        m.add_argument("model", nargs="?", default=None)
    return parser


COMMANDS = {"generate": cmd_generate, "judge": cmd_judge, "eval": cmd_eval, "train": cmd_train, "score": cmd_score, "run": cmd_run, "report": cmd_report, "export": cmd_export, "constitution": cmd_constitution, "model": cmd_model}


def main(argv: list[str] | None = None) -> int:
    from cai.config import ConfigError
    from cai.constitution import ConstitutionError
    from cai.inputs import InputError
    from cai.models import ModelNotFoundError
    from cai.store import RunConflictError
    from cai.train.data import DataError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ConstitutionError, InputError, ModelNotFoundError, RunConflictError, DataError, ValueError,
            FileNotFoundError) as e:
        print(f"cai: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from cai.generate import RunFailed

        if isinstance(e, RunFailed):
            print(f"cai: run failed: {e}", file=sys.stderr)
            return 1
        raise
    except OSError as e:
        print(f"cai: error: {e}", file=sys.stderr)
        return 1
