"""`lsg-export`: a thin command line over the Python API. What a command wrote is remembered here
(cli_state.py), per working directory, as the next command's default folder; the API takes explicit folders."""
import json
import sys

import click

from .errors import user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lsg-export")
def main():
    """Make long-document transformers deployable: convert a 512-token encoder to LSG attention,
    export it to ONNX, validate and benchmark it.

    \b
      lsg-export convert                      # the bundled all-MiniLM-L6-v2 -> ./lsg-all-MiniLM-L6-v2-4096
      lsg-export convert roberta-base --max-sequence-length 8192 -o lsg-roberta
      lsg-export onnx --optimize O2           # the last converted folder -> <it>/onnx, checked against PyTorch
      lsg-export validate --lengths 1,500,4096
    """


@main.command(context_settings={"show_default": True})
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder [default: lsg-<name>-<length>].")
@click.option("--max-sequence-length", default=4096, type=int, help="New maximum length; positions are tiled.")
@click.option("--architecture", help="Head to build, e.g. BertForSequenceClassification [default: the checkpoint's].")
@click.option("--block-size", type=int, help="Local block size [default: 128, or the LSG checkpoint's].")
@click.option("--sparse-block-size", type=int, help="Compressed tokens on each side of the local window [128].")
@click.option("--sparsity-factor", type=int, help="Compression factor of the sparse tokens [2].")
@click.option("--sparsity-type", type=click.Choice(["none", "norm", "pooling", "lsh", "stride", "block_stride",
                                                    "bos_pooling"]), help="How tokens are compressed [norm].")
@click.option("--num-global-tokens", type=int, help="Global tokens put in front, 1..512 [1].")
@click.option("--mask-first-token", is_flag=True, default=None, help="Mask the first token (CLS/<s>) as a key.")
@click.option("--pool-with-global/--no-pool-with-global", default=None,
              help="Replace the first token's output by the first global's [pool].")
@click.option("--lsh-num-pre-rounds", type=int, help="Pre-merging rounds of the lsh sparsity [1].")
@click.option("--model-kwargs", help='JSON object of further config keys, e.g. \'{"sparsity_type": "lsh"}\'.')
@click.option("--random-global-init", is_flag=True, help="Initialise global tokens from a fitted normal.")
@click.option("--global-positional-stride", default=64, type=int, help="Stride of positions given to globals.")
@click.option("--keep-first-global-token", is_flag=True, help="LSG checkpoint: keep its first global token.")
@click.option("--resize-lsg", is_flag=True, help="LSG checkpoint: only re-tile positions, keep the globals.")
@click.option("--seed", default=123, type=int, help="Seed of the random draws.")
@click.option("--force", is_flag=True, help="Output folder not empty: replace what a conversion writes there (weights, "
              "config, modeling code, tokenizer, model card) and keep the rest (an onnx/ export, your files), "
              "saying which on stderr first.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def convert(model, output, as_json, **options):
    """Convert MODEL (folder or hub id; default: bundled all-MiniLM-L6-v2) to its LSG variant.

    \b
    Examples:
      lsg-export convert
      lsg-export convert ./my-bert -o lsg-my-bert --max-sequence-length 8192 --sparsity-type pooling
      lsg-export convert roberta-base --architecture RobertaForSequenceClassification --mask-first-token
      lsg-export convert ./bart-base -o lsg-bart-base-4096          # bart, mbart, pegasus: LSG encoder, dense decoder
      lsg-export convert ./pegasus-large --model-kwargs '{"pass_global_tokens_to_decoder": false}'
    """
    from rich.console import Console

    from .cli_state import remember_output
    from .convert import convert as run

    console = Console(stderr=True)
    with console.status("converting") as status:
        result = run(model, output, status=lambda message: status.update(message),
                     notice=lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True),
                     **options)
    remember_output("convert", result.path)
    if as_json:
        click.echo(json.dumps({"output": str(result.path), "architecture": result.architecture,
                               "source": result.source}))
    else:
        console.print(f"[green]wrote[/green] {result.path} ({result.architecture}, "
                      f"{result.model.config.max_position_embeddings} positions)")


from .ops.cli import build_ops_command  # noqa: E402  (the command lives beside the op library)

main.add_command(build_ops_command)

from .deploy.cli import deploy_command, serve_command  # noqa: E402  (the commands live with the deploy package)

main.add_command(deploy_command)
main.add_command(serve_command)

from .bench.cli import bench_command  # noqa: E402  (the command lives with the benchmark package)

main.add_command(bench_command)

from .openvino.cli import openvino_command  # noqa: E402

main.add_command(openvino_command)


def _print_report(report, as_json, payload):
    from rich.console import Console

    from .onnx.validate import render_table
    if as_json:
        click.echo(json.dumps(payload, indent=1))
    else:  # piped: wide enough for the table's columns rather than rich's 80
        Console(width=None if sys.stdout.isatty() else 160).print(render_table(report))


def _print_ties(console, report):
    if report.tied_lengths:
        console.print(f"[yellow]near-tie[/yellow] at length {', '.join(map(str, report.tied_lengths))}: keys of equal "
                      f"norm up to float32 rounding were ranked the other way; PyTorch given the same picks "
                      f"reproduces the ONNX output (the swapped run's difference is in the table)", soft_wrap=True)


@main.command(context_settings={"show_default": True})
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder [default: MODEL/onnx].")
@click.option("--seq", type=int, help="Longest input the graph accepts [default: the model's maximum length].")
@click.option("--task", default="auto", help="auto (from the architecture), feature-extraction, fill-mask, "
              "text-classification, token-classification, question-answering or multiple-choice; encoder-decoders "
              "(bart, mbart, pegasus ForConditionalGeneration): text2text-generation.")
@click.option("--opset", default=18, type=int, help="ONNX opset (18 and above).")
@click.option("--attention", default="gather", help="How LSG attention becomes ONNX: gather (standard ops only) or "
              "custom-op (one ai.lsg.LSGAttention node per layer; needs the library of `lsg-export build-ops`, "
              "built on first use).")
@click.option("--optimize", default="none", help="ONNX Runtime optimisation level: none, O1, O2 or O3 (as optimum).")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute, float32 inputs/outputs (CUDA only).")
@click.option("--quantize", help="int8: dynamic quantisation of the MatMul weights (its error is reported).")
@click.option("--keep-float", default=0, type=int, help="With --quantize int8 (encoders): keep in float32 the N "
              "MatMul weights whose int8 loses most, each measured alone on the validation text (slower than "
              "int8, closer to float32).")
@click.option("--device", default="cpu", help="cpu or cuda: where the graph is optimised for and validated.")
@click.option("--atol", type=float, help="Largest accepted difference with PyTorch [default: 1e-4, fp16 1e-2].")
@click.option("--lengths", help="Validation lengths, e.g. 1,500,4096 [default: around the block boundaries, "
              "seq/2 and seq].")
@click.option("--batch-size", default=2, type=int, help="Validation batch (its last row padded).")
@click.option("--text", type=click.Path(dir_okay=False), help="A text file whose tokens the validation runs on "
              "[default: random ids; int8: /usr/share/common-licenses/GPL-3 where present].")
@click.option("--merge-decoders/--no-merge-decoders", default=None, help="Encoder-decoders: also write "
              "decoder_model_merged.onnx (both decoders in one graph, as optimum exports; optimum loads it) "
              "[default: on where the [optimum] extra is installed, which the merge needs].")
@click.option("--pooling", type=click.Choice(["mean", "cls", "max", "none"]), help="feature-extraction: also "
              "output sentence_embedding (batch, hidden), the last hidden state pooled over the real tokens, then "
              "L2-normalised when the checkpoint's sentence-transformers pipeline normalises [default: the "
              "checkpoint's sentence-transformers pooling, else none].")
@click.option("--short-graph/--no-short-graph", default=True, help="With a sentence_embedding output: also "
              "write model_short.onnx, the same model for inputs of at most two LSG blocks at the cost of their own "
              "length (dense attention; model.onnx pads to whole blocks), validated like model.onnx; `serve` "
              "embeds short texts with it. Not made with --keep-float.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (export.json) as JSON.")
@user_errors
def onnx(model, output, as_json, **options):
    """Export a converted LSG folder to ONNX: one graph valid at every length up to --seq, checked
    against PyTorch. Exit code 1 when the check fails (OUT is kept, the failure is in OUT/export.json).

    \b
    Examples:
      lsg-export onnx                                  # the folder `convert` last wrote from here
      lsg-export onnx lsg-all-MiniLM-L6-v2-4096 --optimize O2 -o minilm-onnx
      lsg-export onnx lsg-bert --task feature-extraction --seq 2048 --quantize int8
      lsg-export onnx lsg-all-MiniLM-L6-v2-4096 --optimize O2 --quantize int8 --keep-float 12
      lsg-export onnx lsg-bart-base-4096 -o bart-onnx  # encoder_model.onnx, decoder(_with_past)_model.onnx, merged
      lsg-export onnx lsg-bart-base-4096 --optimize O2 --quantize int8 -o bart-int8
      lsg-export onnx lsg-all-MiniLM-L6-v2-4096 --attention custom-op -o minilm-onnx-op
      lsg-export onnx lsg-my-bert --task feature-extraction --pooling cls   # + sentence_embedding
    """
    from rich.console import Console

    from .cli_state import given_or_last, remember_output
    from .onnx import export_onnx

    console = Console(stderr=True)
    model = given_or_last(model, "convert", console)
    with console.status("exporting") as status:
        result = export_onnx(model, output, status=lambda message: status.update(message), **options)
    remember_output("onnx", result.path)  # written even when its validation failed: the next command's default
    _print_report(result.report, as_json, {"output": str(result.path), **result.info})
    _print_ties(console, result.report)
    if not as_json:
        info = result.info
        optimized = info.get("optimize")
        nodes = f"{info['graph']['nodes']} nodes" + (
            f", {optimized['nodes_after']} after {optimized['level']}" if optimized else "")
        pooling = info.get("pooling")
        pooled = f", sentence_embedding: {pooling['mode']}{' + L2' * pooling['normalize']}" if pooling else ""
        short = info.get("short_graph")
        short = f", {short['file']} up to {short['max_tokens']} tokens" if short else ""
        console.print(f"[green]wrote[/green] {result.path} ({result.task}{pooled}, {info['precision']}, opset "
                      f"{info['opset']}, {nodes}{short}, {info['seconds']['total']:.0f} s)", soft_wrap=True)
    if not result.passed:
        console.print(f"[red]validation failed:[/red] {result.report.failure_message()}; {result.path} is kept, "
                      f"the failure is recorded in its export.json", soft_wrap=True)
        sys.exit(1)


@main.command(context_settings={"show_default": True})
@click.argument("folder", required=False)
@click.option("--lengths", help="Lengths to compare at, e.g. 1,500,4096 [default: those of the export].")
@click.option("--batch-size", default=2, type=int, help="Rows per batch (the last one padded).")
@click.option("--text", type=click.Path(dir_okay=False), help="A text file: its tokens replace the random ids.")
@click.option("--atol", type=float, help="Largest accepted difference [default: 1e-4, fp16 1e-2; int8 reports only].")
@click.option("--model", help="The converted PyTorch folder [default: the one export.json names].")
@click.option("--device", help="cpu or cuda [default: the export's].")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@user_errors
def validate(folder, as_json, **options):
    """Compare an exported FOLDER (default: the last `lsg-export onnx` output from here) with its
    PyTorch model again; exit code 1 above --atol. A length above --atol passes as a tie only when
    PyTorch, with near-tie picks of its norm selection swapped, reproduces the ONNX output. Each run is
    recorded in FOLDER/export.json (`validations`); deploy and serve gate on the latest.

    \b
    Examples:
      lsg-export validate lsg-all-MiniLM-L6-v2-4096/onnx --lengths 1,500,4096
      lsg-export validate minilm-onnx --text report.txt --json
    """
    from rich.console import Console

    from .cli_state import given_or_last
    from .onnx import validate_onnx

    console = Console(stderr=True)
    folder = given_or_last(folder, "onnx", console)
    with console.status("validating") as status:
        report = validate_onnx(folder, status=lambda message: status.update(message), **options)
    _print_report(report, as_json, {"folder": str(folder), **report.to_dict()})
    _print_ties(console, report)
    if not report.passed:
        console.print(f"[red]validation failed:[/red] {report.failure_message()}", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
