"""`lsg-export bench`: registered in lsg_export/cli.py with `main.add_command(bench_command)`."""
import itertools

import click

from ..errors import LSGExportError, user_errors
from .worker_spec import REPEAT, WARMUP

BACKEND_NAMES = ("torch-lsg, torch-dense, torch-chunked, ort-gather, ort-gather-optimized, ort-int8 (cpu), "
                 "ort-fp16 (cuda), ort-custom-op, ort-int8-custom-op (cpu), ov-f32, ov-bf16, ov-sdpa, ov-mixed, "
                 "ov-int8 (cpu, the openvino extra; bf16 and mixed where the CPU has bf16), torch-longformer; "
                 "named only: ort-int8-per-tensor, ort-int8-per-tensor-custom-op (cpu, the int8 before per-channel "
                 "scales), ort-int8-keep12-custom-op, ov-int8-keep2 (cpu, int8 with the weights that lose most kept "
                 "float)")
SEQ2SEQ_NAMES = ("torch-lsg, torch-dense, ort-gather, ort-gather-optimized, ort-int8, ort-fp16, ort-custom-op, "
                 "ort-int8-custom-op")


def default_target():
    """(folder, how it was chosen) when no MODEL_OR_EXPORT is given: the last export made from here, else
    the last convert."""
    from ..cli_state import last_output
    for kind, chosen in (("onnx", "last export"), ("convert", "last convert")):
        try:
            return last_output(kind), chosen
        except LSGExportError:
            pass
    raise LSGExportError("no MODEL_OR_EXPORT given and neither `lsg-export onnx` nor `lsg-export convert` "
                         "has written anything from this directory: name a folder")


@click.command("bench", context_settings={"show_default": True})
@click.argument("model_or_export", required=False)
@click.option("--seq", help="Lengths, e.g. 512,1024,4096 [default: 512,1024,2048,4096,8192 up to the model's "
              "maximum; --quick: 128,256].")
@click.option("--batch-size", default="1", help="Batch sizes, e.g. 1,4.")
@click.option("--backends", help=f"Comma-separated, among {BACKEND_NAMES}; encoder-decoders: {SEQ2SEQ_NAMES} "
              "[default: all that run on the device and the model].")
@click.option("--device", default="cpu", help="cpu or cuda.")
@click.option("--threads", type=int, help="Threads of every backend (torch.set_num_threads, ONNX Runtime "
              "intra_op_num_threads) [default: the CPUs available].")
@click.option("--warmup", default=WARMUP, type=int,
              help="Untimed runs before each measurement (fewer when a run is long).")
@click.option("--repeat", default=REPEAT, type=int, help="Timed runs per measurement (fewer when a run is long).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write every measurement and the environment as JSON ('-': stdout).")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="The same as CSV: a row per backend, length and batch, with its times.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="PNG: latency and memory against length, "
              "speed-ups at the longest length.")
@click.option("--new-tokens", type=int, help="Encoder-decoders: tokens of the timed generation (exactly "
              "that many) [default: 32; --quick: 8].")
@click.option("--num-beams", type=int, help="Encoder-decoders: beams of the timed generation [default: 1, greedy].")
@click.option("--rounds", default="1", metavar="INTEGER",
              help="Run the whole sequence of backends this many times, in reverse "
              "order every other round (A B C, C B A, ...), and pool each cell's timed runs: a drift of the machine's "
              "speed then weighs on every backend alike.")
@click.option("--text", type=click.Path(dir_okay=False), help="Document of the quality column (each backend's "
              "output against float32 PyTorch's on its first tokens, framed by the tokenizer's special tokens as its "
              "encoding of a long text is: [CLS] ... [SEP]) [default: /usr/share/common-licenses/GPL-3 "
              "where present, else random ids].")
@click.option("--quick", is_flag=True, help="Seconds-long smoke run: lengths 128,256, 1 warm-up, 2 runs (the "
              "first run on a model also builds the exports: minutes).")
@user_errors
def bench_command(model_or_export, json_file, csv_file, plot_file, **options):
    """Time MODEL_OR_EXPORT (a converted folder or an `lsg-export onnx` folder; default: the last export
    made from here, else the last convert) with PyTorch, ONNX Runtime and the alternatives: latency
    p50/p90/p99, tokens/s, peak memory (each backend in its own process), speed-ups against torch-lsg
    and torch-chunked. Missing ONNX exports are made into MODEL/bench-exports and reused. A backend that
    fails, or a length it cannot run, is reported as such; the others go on. Encoder-decoders (bart, mbart,
    pegasus) report the encoder's latency and generation's new tokens/s (greedy, or --num-beams N), on
    torch-lsg, torch-dense and the ort-* backends made for them. A quality column gives each backend's
    cosine to float32 PyTorch on a real document (--text).

    The first run on a model builds the ONNX exports its ort-* backends need (minutes; progress on stderr)
    and caches them in MODEL/bench-exports; later runs reuse them while they are up to date.

    \b
    Examples:
      lsg-export bench --quick
      lsg-export bench lsg-all-MiniLM-L6-v2-4096 --seq 1024,4096 --threads 2 --json bench.json --plot bench.png
      lsg-export bench minilm-onnx --backends torch-lsg,ort-gather,torch-chunked --batch-size 1,4
      lsg-export bench lsg-roberta --device cuda --backends torch-lsg,ort-fp16
      lsg-export bench lsg-bart-base-4096 --seq 4096 --new-tokens 32 --threads 2
      lsg-export bench lsg-bart-base-4096 --seq 4096 --backends torch-lsg,ort-int8 --num-beams 4
      lsg-export bench --seq 4096,16384 --rounds 3
      lsg-export bench --seq 4096 --backends ort-int8,ort-int8-per-tensor --rounds 3 --text report.txt
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .backends import select_backends, skipped_for_seq2seq
    from .plot import plot
    from .report import render_table, write_csv, write_json
    from .run import check_device, check_new_tokens, check_num_beams, check_rounds, run_bench
    from .target import choose_lengths, parse_ints, resolve_target

    console = Console(stderr=True)
    # arguments checked before any work: the counts of the progress bar come from them
    check_device(options["device"])
    options["rounds"] = rounds = check_rounds(options["rounds"])
    target = resolve_target(*((model_or_export, "given") if model_or_export is not None else default_target()))
    names = select_backends(options["backends"], options["device"], target.seq2seq)
    if target.chosen != "given":
        console.print(f"using {target.describe()}", soft_wrap=True)
    lengths = choose_lengths(options["seq"], target, options["quick"])
    check_new_tokens(options["new_tokens"], target, options["quick"])
    check_num_beams(options["num_beams"], target)
    cells = len(names) * len(lengths) * len(parse_ints(options["batch_size"], "--batch-size"))
    if target.seq2seq and not options["backends"]:
        reasons = {}
        for name, why in skipped_for_seq2seq(options["device"]).items():
            reasons.setdefault(why, []).append(name)
        how = "greedy" if (options["num_beams"] or 1) == 1 else f"{options['num_beams']}-beam"
        console.print(f"encoder-decoder: encoder latency and {how} generation on {', '.join(names)}; not run: "
                      + "; ".join(f"{', '.join(group)} ({why})" for why, group in reasons.items()), soft_wrap=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("preparing", total=cells * rounds)
        done = itertools.count()  # cells reported so far: the round of the next one

        def progress(cell):
            where = f"round {next(done) // cells + 1}/{rounds}: " if rounds > 1 else ""
            bar.update(task, advance=1, description=f"{where}{cell.backend} {cell.length} x {cell.batch}")

        def status(message):
            bar.update(task, description=message)
            if not console.is_terminal:  # no live bar in a log or pipe: one line per step
                console.print(message, soft_wrap=True)

        result = run_bench(str(target.export or target.model), **options, status=status, progress=progress)
    result.target["chosen"] = target.chosen
    # the table goes to stderr when stdout carries the JSON or CSV
    out = console if "-" in (json_file, csv_file) else Console()
    if not out.is_terminal:
        out.width = max(out.width, 180)  # a file or pipe: no reason to squeeze the columns
    out.print(render_table(result))
    for name, record in result.backends.items():
        if record["status"] == "failed":
            console.print(f"[red]{name} failed:[/red] {record['error']}", soft_wrap=True)
        elif record["status"] != "ok":  # skipped (e.g. openvino not installed) or not applicable on this CPU
            console.print(f"[yellow]{name} {record['status']}:[/yellow] {escape(record['note'])}", soft_wrap=True)
    if json_file:
        write_json(result, json_file)
    if csv_file:
        write_csv(result, csv_file)
    if plot_file:
        console.print(f"[green]wrote[/green] {plot(result, plot_file)}")
