"""`mofe batch REF --task ... --input FILE --output FILE`: score a QA file, write a report."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("batch", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ref")
@click.option("--task", required=True, type=click.Choice(["medmcqa", "mmlu", "pubmedqa", "mcq"]))
@click.option("--input", "input_", required=True, type=click.Path(path_type=Path),
              help="JSONL, JSON, CSV or Parquet; streamed.")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Results JSONL (resumed if it exists); reports go beside it.")
@click.option("--shots", default=0, show_default=True, help="Few-shot examples per question.")
@click.option("--dev", type=click.Path(path_type=Path), help="Labeled rows to draw shots from.")
@click.option("--seed", default=1234, show_default=True, help="Shot sampling seed.")
@click.option("--endpoint", help="Score via a running OpenAI-compatible server (base URL).")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="API key for --endpoint.")
@click.option("--served-model", help="Model name on the endpoint (default: its first model).")
@click.option("--concurrency", default=8, show_default=True, help="Requests in flight.")
@click.option("--limit", type=int, help="Score only the first N valid rows.")
@click.option("--strict", is_flag=True, help="Fail on the first malformed row.")
@click.option("--cop-base", type=click.Choice(["auto", "0", "1"]), default="auto",
              show_default=True, help="MedMCQA cop convention (0-3 or 1-4).")
@click.option("--template", help="Jinja prompt template (file or text); default lm-eval's.")
@click.option("--chat-template", is_flag=True, help="Wrap prompts in the model's chat template.")
@click.option("--report-png", is_flag=True, help="Also plot OUTPUT.report.png.")
@click.option("--dtype", default="auto", show_default=True, help="Model dtype (offline).")
@click.option("--backend", type=click.Choice(["vllm", "hf"]), default="vllm", show_default=True,
              help="Offline engine: vLLM, or plain transformers.")
@click.option("--chunk-size", default=64, show_default=True,
              help="Questions per engine call and per fsynced write.")
@click.option("--routing", type=click.Choice(["chunk", "question"]), default="chunk",
              show_default=True, help="Granularity of per-row expert shares.")
@click.option("--max-model-len", type=int, help="Context limit (default: the model's).")
@click.option("--threads", type=int,
              help="CPU threads (cores) the offline vLLM engine computes on (default: every "
                   "core no other vLLM engine on this machine uses).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def batch_cli(ref, task, input_, output, shots, dev, seed, endpoint, api_key, served_model,
              concurrency, limit, strict, cop_base, template, chat_template, report_png, dtype,
              backend, chunk_size, routing, max_model_len, threads, no_progress):
    """Score multiple-choice medical QA by option log-likelihood (as lm-evaluation-harness).

    REF is a checkpoint directory or a registered NAME@VERSION. Writes one JSONL line per
    row to OUTPUT, plus OUTPUT.report.md and OUTPUT.report.json.
    """
    from pydantic import ValidationError

    from .config import BatchConfig
    from .provenance import OutputBusyError
    from .questions import BatchInputError
    from .runner import run_batch

    try:
        cfg = BatchConfig(model=ref, task=task, input=input_, output=output, shots=shots,
                          dev=dev, seed=seed, endpoint=endpoint, api_key=api_key,
                          served_model=served_model, concurrency=concurrency, limit=limit,
                          strict=strict, cop_base=cop_base, template=template,
                          chat_template=chat_template, report_png=report_png, dtype=dtype,
                          backend=backend, chunk_size=chunk_size, routing=routing,
                          max_model_len=max_model_len, threads=threads,
                          progress=not no_progress)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from None
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    try:
        report = run_batch(cfg, log=log)
    except (BatchInputError, OutputBusyError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        if type(exc).__module__.startswith("openai"):  # endpoint errors: status and message
            raise click.ClickException(f"endpoint {endpoint}: {exc}") from None
        raise
    o = report["overall"]
    acc = "n/a" if o["acc"] is None else f"{100 * o['acc']:.1f}%"
    click.echo(f"{report['scored_this_run']} scored, {report['resumed']} resumed, "
               f"{report['skipped']['count']} skipped; acc {acc} over {o['n']}; "
               f"{report['throughput_qps']:.2f} questions/s")
    for path in report["report_files"]:
        click.echo(f"wrote {path}")
    if report["interrupted"]:
        sys.exit(130)
