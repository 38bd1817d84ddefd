"""`lsg-export`: a thin command line over the Python API."""
import json

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
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def convert(model, output, as_json, **options):
    """Convert MODEL (folder or hub id; default: bundled all-MiniLM-L6-v2) to its LSG variant.

    \b
    Examples:
      lsg-export convert
      lsg-export convert ./my-bert -o lsg-my-bert --max-sequence-length 8192 --sparsity-type pooling
      lsg-export convert roberta-base --architecture RobertaForSequenceClassification --mask-first-token
    """
    from rich.console import Console

    from .convert import convert as run

    console = Console(stderr=True)
    with console.status("converting") as status:
        result = run(model, output, status=lambda message: status.update(message), **options)
    if as_json:
        click.echo(json.dumps({"output": str(result.path), "architecture": result.architecture,
                               "source": result.source}))
    else:
        console.print(f"[green]wrote[/green] {result.path} ({result.architecture}, "
                      f"{result.model.config.max_position_embeddings} positions)")


from .ops.cli import build_ops_command  # noqa: E402  (the command lives beside the op library)

main.add_command(build_ops_command)

if __name__ == "__main__":
    main()
