"""`nlptasks` on the command line: parse, call the API, print. No logic of its own.

Exit status: 0 success, 2 a bad recipe, argument or input file (message on stderr naming the
file, key or line), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nlptasks import api, console, sharding
from nlptasks.errors import UserInputError
from nlptasks.predict import read_texts
from nlptasks.recipe import parse_overrides, shipped_recipes
from nlptasks.tasks import headline_scores

QUICKSTART_RECIPES = {
    "minilm-l6 (full fine-tuning)": "quickstart/rotten-tomatoes",
    "minilm-l6 (LoRA)": "quickstart/rotten-tomatoes-lora",
    "bilstm (recurrent baseline)": "quickstart/rotten-tomatoes-bilstm",
}
QUICKSTART_REPORT = "runs/quickstart-report"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.configure(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence: report, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlptasks", description="Fine-tune and evaluate NLP models from recipes.", parents=[_verbose_flag(False)]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = _command(commands, "run", help="train and evaluate a recipe")
    run.add_argument("recipe", help="a recipe file or a shipped name such as ner/minilm")
    _add_set(run)
    _add_overwrite(run)

    evaluate = _command(commands, "eval", help="score a finished run on a split or a labelled file")
    evaluate.add_argument("run_dir")
    where = evaluate.add_mutually_exclusive_group()
    where.add_argument("--split", default="test")
    where.add_argument("--file", help="labelled data in the task's format (JSONL, CSV, CoNLL)")
    _add_set(evaluate, "a data.* or generation.* setting, e.g. --set data.columns={review: text} (repeatable)")

    predict = _command(commands, "predict", help="predict for texts (--text, --file, or stdin) as JSON lines")
    predict.add_argument("run_dir")
    predict.add_argument(
        "--text", action="append", help="a text to predict for (repeatable); QA: a JSON object with question, context"
    )
    predict.add_argument(
        "--file", help="one text per line, or JSON lines with a 'text' field (QA: 'question' and 'context')"
    )
    predict.add_argument(
        "--output", help="write the predictions to this JSON Lines file instead (required under several processes)"
    )
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument(
        "--max-batch-tokens",
        type=int,
        help="bound an encoder's batch at this many rows x padded tokens (default: 512 on a CPU, none on a GPU; "
        "0: none)",
    )
    _add_chunk_size(predict)
    _add_set(predict, "a generation.* setting, e.g. --set generation.num_beams=1 (repeatable)")

    embed = _command(commands, "embed", help="sentence embeddings of a text file as .npy or .parquet")
    embed.add_argument("run_dir")
    embed.add_argument("--file", required=True, help="one text per line, or JSON lines with a 'text' field")
    embed.add_argument("--output", required=True, help="OUT.npy (float32 rows) or OUT.parquet (text, embedding)")
    embed.add_argument("--batch-size", type=int, default=64)
    _add_chunk_size(embed)

    export = _command(commands, "export", help="write a run's model as a standalone folder")
    export.add_argument("run_dir")
    export.add_argument("--output", required=True, help="the folder to write (replaced if it exists)")
    export.add_argument(
        "--merge", action="store_true", help="fold LoRA into the weights: a plain model for bare transformers"
    )
    export.add_argument(
        "--format",
        choices=api.EXPORT_FORMATS,
        default="transformers",
        help="transformers: a model folder; onnx: an ONNX Runtime graph (encoder tasks, LoRA merged); "
        "ctranslate2: a CTranslate2 model (generating tasks: T5, Llama; LoRA merged)",
    )
    export.add_argument("--quantize", choices=["int8"], help="with --format onnx or ctranslate2: int8 weights")
    export.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload the folder to this Hub model repo")

    listing = _command(commands, "adapters", help="list the adapter runs under a folder")
    listing.add_argument("root", nargs="?", default="runs")

    recipes = _command(commands, "recipes", help="list the shipped recipes, or show one with its documentation")
    recipes.add_argument("--show", metavar="RECIPE", help="print RECIPE resolved, each field with its documentation")
    _add_set(recipes)
    validate = _command(commands, "validate", help="check a recipe as run would, without running it")
    validate.add_argument("recipe", help="a recipe file or a shipped name such as ner/minilm")
    _add_set(validate)
    inspect = _command(commands, "inspect", help="report on a recipe's data before training: lengths, labels, leaks")
    inspect.add_argument("recipe", help="a recipe file or a shipped name such as ner/minilm")
    inspect.add_argument("--output", help="also write report.json, report.md and length histograms (PNG) here")
    inspect.add_argument(
        "--time-steps", type=int, default=0, metavar="N", help="time N training steps (in a scratch folder) per epoch"
    )
    _add_set(inspect)
    search = _command(commands, "tune", help="search a recipe's hyperparameters (Optuna): trials as runs, best.yaml")
    search.add_argument("recipe", help="a recipe file or a shipped name such as classification/minilm")
    search.add_argument("--trials", type=_positive, required=True, help="finished trials the search ends with")
    search.add_argument("--output", required=True, help="the study folder (a killed search continues there)")
    search.add_argument("--space", help="a YAML file changing the default space: KEY: {low, high, log} | {choices}")
    search.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    search.add_argument("--workers", type=_positive, default=1, help="processes running trials side by side")
    _add_set(search)
    compare = _command(commands, "compare", help="a side-by-side report of run directories or recipes (run first)")
    compare.add_argument("sources", nargs="+", metavar="RUN_DIR_OR_RECIPE")
    compare.add_argument("--output", required=True, help="the report folder: report.md, report.html, PNG plots")
    _add_set(compare)
    _add_overwrite(compare)
    _add_serve(_command(commands, "serve", help="one HTTP service for runs and RAG indexes: batched predict, /metrics"))
    _add_rag(_command(commands, "rag", help="retrieval-augmented generation: index, search, ask, eval, serve"))

    quickstart = _command(
        commands,
        "quickstart",
        help="sentiment on Rotten Tomatoes: MiniLM full and LoRA beside a BiLSTM, offline, a report",
    )
    _add_set(quickstart)
    _add_overwrite(quickstart)
    return parser


def _verbose_flag(default: object) -> argparse.ArgumentParser:
    flag = argparse.ArgumentParser(add_help=False)
    flag.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="also show the libraries' logs and progress bars"
    )
    return flag


SUBCOMMAND_VERBOSE = _verbose_flag(argparse.SUPPRESS)
"""`--verbose` after a subcommand too; unset there, it leaves the value before the subcommand."""


def _command(commands: Any, name: str, **options: Any) -> argparse.ArgumentParser:
    return commands.add_parser(name, parents=[SUBCOMMAND_VERBOSE], **options)


def _add_rag(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="rag_command", required=True)
    index = _command(commands, "index", help="add documents to an index (changed ones replace their chunks)")
    index.add_argument("--docs", required=True, action="append", help="a file or folder (.txt .md .jsonl .csv)")
    index.add_argument("--index", required=True, help="the index folder (created if absent)")
    index.add_argument("--prune", action="store_true", help="remove indexed documents not among --docs")
    for name, text in (("search", "the best chunks for a query"), ("ask", "an answer with citations")):
        command = _command(commands, name, help=f"{text}, as JSON")
        command.add_argument("--index", required=True)
        command.add_argument("question")
    evaluate = _command(commands, "eval", help="score retrieval (cranfield) or open-domain QA (squad), as JSON")
    evaluate.add_argument("--index", required=True, help="the benchmark's index (built there when absent)")
    evaluate.add_argument("--benchmark", required=True, choices=["cranfield", "squad"])
    evaluate.add_argument("--answers", type=int, default=200, help="squad: questions answered end to end (0: none)")
    tune = _command(commands, "tune", help="fine-tune the index's retriever and generator on questions with answers")
    tune.add_argument("--index", required=True, help="the index to tune (it is not changed)")
    tune.add_argument(
        "--questions",
        required=True,
        help="JSON Lines: question, answers, and doc_id or context (the gold passage); SQuAD files read as they are",
    )
    tune.add_argument("--out", required=True, help="folder of the runs, their data, the tuned index (OUT/index)")
    tune.add_argument("--holdout", type=float, default=0.1, help="share of questions held out to score both")
    tune.add_argument(
        "--unanswerable", type=float, default=0.2, help="share of generator prompts without the answer, to abstain"
    )
    refit = _command(
        commands, "fit-abstention", help="fit a tuned index's abstain_threshold again, under its settings and --set"
    )
    refit.add_argument("--index", required=True, help="a tuned index (OUT/index of `rag tune`)")
    refit.add_argument("--prompts", help="held-out rag-answer rows (default: OUT/data/generator-validation.jsonl)")
    serve = _command(commands, "serve", help="`nlptasks serve` with this index: /v1/rag/NAME/search|ask, /search, /ask")
    serve.add_argument("--index", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    for command in commands.choices.values():
        command.add_argument("--recipe", help="a RAG recipe (file or name such as rag/default) for a new index")
        _add_set(command)


def _add_serve(parser: argparse.ArgumentParser) -> None:
    from nlptasks.serve import ServeSettings

    parser.add_argument(
        "sources",
        nargs="+",
        metavar="RUN_OR_EXPORT",
        help="a run directory, an exported model or a RAG index folder, named after its folder; NAME=PATH to name it",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    for name, field in ServeSettings.model_fields.items():
        flag, text = f"--{name.replace('_', '-')}", f"{field.description} (default: %(default)s)"
        parser.add_argument(flag, type=field.annotation, default=field.default, help=text)
    _add_set(
        parser,
        "generation.* for every generating model and index (generation.engine=ctranslate2); other keys "
        "are a RAG index's query-time settings, e.g. --set top_k=3 (repeatable)",
    )


def _add_set(
    parser: argparse.ArgumentParser, text: str = "override a recipe field, e.g. --set train.epochs=1 (repeatable)"
) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=text)


def _add_chunk_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        type=_positive,
        default=1024,
        help="inputs read, tokenized and predicted at a time; under several processes, the unit they take turns on",
    )


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {value!r}")
    return int(value)


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a run directory holding another recipe's run afresh (the old one kept until the first checkpoint)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    result = api.run(args.recipe, parse_overrides(args.set), overwrite=args.overwrite)
    print(format_metrics({args.recipe: result}))
    print(f"run directory: {result.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    metrics = api.evaluate(args.run_dir, split=args.split, file=args.file, overrides=args.set)
    if sharding.is_main_process():
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    data, decoding = api.inference_overrides(args.set)
    if data:
        raise UserInputError(f"--set data.{next(iter(data))}: predict reads texts, not a data file; eval takes data.*")
    if not args.output:
        sharding.single_process_only("predict: several processes cannot share stdout; pass --output OUT.jsonl")
    if not (args.text or args.file):
        sharding.single_process_only("predict: several processes cannot share stdin; pass --file")
    bound = "auto" if args.max_batch_tokens is None else args.max_batch_tokens or None
    predictor = api.load(
        args.run_dir,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        generation=decoding or None,
        max_batch_tokens=bound,
    )
    if args.text:
        texts = iter(args.text)
    elif args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserInputError(f"--file: file not found: {path}")
        texts = read_texts(path.open(encoding="utf-8"), str(path), predictor.task.input_fields)
    else:
        texts = read_texts(sys.stdin, "<stdin>", predictor.task.input_fields)
    if args.output:
        count = sharding.write_predictions(predictor, texts, Path(args.output))
        if sharding.is_main_process():
            print(f"{count} predictions written to {args.output}")
        return 0
    for prediction in predictor.stream(texts):
        print(json.dumps(prediction, ensure_ascii=False), flush=False)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    rows = api.embed(args.run_dir, args.file, args.output, batch_size=args.batch_size, chunk_size=args.chunk_size)
    if sharding.is_main_process():
        print(f"{rows} embeddings written to {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    folder = api.export(args.run_dir, args.output, args.merge, args.format, args.quantize, push_to_hub=args.push_to_hub)
    print(f"exported {args.run_dir} to {folder}")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    for record in api.list_adapters(args.root):
        print(json.dumps(record))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.show:
        print(api.describe(args.show, args.set))
        return 0
    rows = shipped_recipes()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = api.validate(args.recipe, args.set)
    print(f"{args.recipe}: valid ({recipe.task}, {recipe.model}, {recipe.method}; runs into {recipe.run_dir})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from nlptasks.inspection import markdown

    report = api.inspect(args.recipe, args.set, args.output, args.time_steps)
    print(markdown(report), end="")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    result = api.tune(args.recipe, args.trials, args.output, args.space, args.set, args.pruner, args.workers)
    print(f"best of {result.trials} trials: validation {result.best_value:.4f} with {result.best_params}")
    print(f"best recipe: {result.best_recipe}   trials: {Path(args.output) / 'trials.md'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from nlptasks.compare import compare

    print(f"report: {compare(args.sources, args.output, args.set, overwrite=args.overwrite) / 'report.md'}")
    return 0


def cmd_rag(args: argparse.Namespace) -> int:
    from nlptasks import rag

    if args.rag_command == "index":
        report = rag.build_index(args.docs, args.index, rag.load_settings(args.recipe, args.set), args.prune, True)
        print(json.dumps(report.as_json()))
        return 0
    if args.rag_command == "eval":
        settings = rag.load_settings(args.recipe, args.set) if args.recipe else None  # else defaults, if built
        metrics = rag.evaluate(args.index, args.benchmark, settings, args.set, args.answers, progress=True)
        print(json.dumps(metrics, indent=2))
        return 0
    if args.recipe is not None:
        raise UserInputError(f"--recipe: {args.rag_command} uses the settings the index was built with; use --set")
    if args.rag_command == "tune":
        from nlptasks.rag.tune import tune

        print(
            json.dumps(tune(args.index, args.questions, args.out, args.set, args.holdout, args.unanswerable), indent=2)
        )
        return 0
    if args.rag_command == "fit-abstention":
        from nlptasks.rag.tune import refit_abstention

        print(json.dumps(refit_abstention(args.index, args.prompts, args.set), indent=2))
        return 0
    pipeline = rag.RagPipeline(args.index, args.set)
    if args.rag_command == "search":
        print(json.dumps([hit.as_json() for hit in pipeline.search(args.question)], ensure_ascii=False))
    elif args.rag_command == "ask":
        print(json.dumps(pipeline.ask(args.question), ensure_ascii=False))
    else:
        from nlptasks.rag.serve import serve

        serve(pipeline, args.host, args.port)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from nlptasks.serve import ServeSettings, serve

    settings = {name: getattr(args, name) for name in ServeSettings.model_fields}
    serve(args.sources, args.host, args.port, overrides=args.set, **settings)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from nlptasks.compare import compare

    overrides = parse_overrides(args.set)
    results = {label: api.run(recipe, overrides, args.overwrite) for label, recipe in QUICKSTART_RECIPES.items()}
    report = compare([result.run_dir for result in results.values()], QUICKSTART_REPORT)
    print()
    print(format_metrics(results))
    run_dir = results[next(iter(results))].run_dir
    print(f"\nside by side: {report / 'report.html'}")
    print(f"run directory: {run_dir}   try: nlptasks predict {run_dir} --text 'A triumph.'")
    return 0


def format_metrics(runs: dict[str, api.RunResult]) -> str:
    """A plain-text table: a row per run, split and headline metric of the run's task, with timing."""
    header = ["run", "split", "metric", "value", "train s", "train samples/s"]
    rows = []
    for name, result in runs.items():
        train = result.metrics.get("train", {})
        timing = [f"{train.get('train_runtime', 0):.0f}", f"{train.get('train_samples_per_second', 0):.1f}"]
        for split, values in result.metrics.items():
            if split == "train":
                continue
            for metric, value in headline_scores(result.recipe.task, values).items():
                rows.append([name, split, metric, f"{value:.4f}", *timing])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "embed": cmd_embed,
    "export": cmd_export,
    "adapters": cmd_adapters,
    "recipes": cmd_recipes,
    "validate": cmd_validate,
    "inspect": cmd_inspect,
    "quickstart": cmd_quickstart,
    "rag": cmd_rag,
    "serve": cmd_serve,
    "compare": cmd_compare,
    "tune": cmd_tune,
}
