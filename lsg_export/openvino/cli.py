"""`lsg-export openvino`: registered in lsg_export/cli.py with `main.add_command(openvino_command)`."""
import json
import sys

import click

from ..errors import user_errors
from .runtime import PRECISIONS
from .weights import GROUP_SIZE


@click.command("openvino", context_settings={"show_default": True})
@click.argument("export", required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder [default: EXPORT-openvino].")
@click.option("--attention", default="sdpa", type=click.Choice(["sdpa", "gather"]), help="sdpa: the export's model "
              "exported anew with its block attention as ONNX Attention, which OpenVINO fuses (faster); gather: "
              "the export's own graph.")
@click.option("--weights", default="int8", type=click.Choice(["int8", "int8-sym", "none"]), help="int8: MatMul and "
              "embedding weights in int8 (NNCF, one scale and zero point per output channel) and the activations "
              "quantized per token and group at run time; int8-sym: symmetric weights; none: float32.")
@click.option("--group-size", default=GROUP_SIZE, type=int, help="int8: input channels sharing one activation step.")
@click.option("--keep-float", default=0, type=int, help="int8: keep float the N MatMul weights whose int8 loses "
              "most, each measured alone on the validation text (slower than int8, closer to float32).")
@click.option("--precision", default="auto", type=click.Choice(PRECISIONS), help="What OpenVINO computes the rest "
              "in while validating (auto: its default here, bf16 where the CPU has native bf16); the folder runs at "
              "the precision of the CPU it is compiled on. mixed (with --weights none, CPUs with native bf16): bf16 "
              "written into the graph for the weight MatMuls and the attention, float32 for the key selection and "
              "the rest; compile that folder with INFERENCE_PRECISION_HINT f32.")
@click.option("--model", help="The converted PyTorch folder the export was made from [default: the one its "
              "export.json names].")
@click.option("--lengths", help="Validation lengths, e.g. 1,500,4096 [default: those of the export].")
@click.option("--batch-size", default=2, type=int, help="Validation batch (its last row padded).")
@click.option("--text", type=click.Path(dir_okay=False), help="A text file whose tokens the validation runs on "
              "[default: /usr/share/common-licenses/GPL-3 for int8 and bf16, else random ids].")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder (all of it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (openvino_export.json) as JSON.")
@user_errors
def openvino_command(export, output, as_json, **options):
    """Make an OpenVINO IR folder of an encoder's ONNX export (default: the last `lsg-export onnx` output from
    here): openvino_model.xml / .bin with int8 weights, the tokenizer and sentence-transformers files, checked
    against PyTorch. Needs the openvino extra (openvino, nncf). bf16 and int8 are reported, not held to a
    tolerance; float32 (--weights none --precision f32) is held to the export's. Exit code 1 when that fails.

    \b
    Examples:
      lsg-export openvino                              # the export `lsg-export onnx` last wrote from here
      lsg-export openvino lsg-all-MiniLM-L6-v2-4096/onnx -o minilm-openvino   # a plain (not --optimize) export
      lsg-export openvino lsg-all-MiniLM-L6-v2-4096/onnx --keep-float 2 -o minilm-openvino-keep2
      lsg-export openvino lsg-all-MiniLM-L6-v2-4096/onnx --weights none -o minilm-ov   # float weights, bf16 on AMX
      lsg-export openvino lsg-all-MiniLM-L6-v2-4096/onnx --weights none --precision f32 -o minilm-ov-f32
      lsg-export openvino lsg-all-MiniLM-L6-v2-4096/onnx --weights none --precision mixed -o minilm-ov-mixed
    \b
    Then, in Python:
      core = openvino.Core(); compiled = core.compile_model("minilm-openvino/openvino_model.xml")
      compiled = core.compile_model("minilm-ov-mixed/openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    """
    from rich.console import Console

    from ..cli_state import given_or_last
    from ..onnx.validate import render_table
    from .export import export_openvino

    console = Console(stderr=True)
    export = given_or_last(export, "onnx", console)
    with console.status("exporting to OpenVINO") as status:
        result = export_openvino(export, output, status=lambda message: status.update(message), **options)
    if as_json:
        click.echo(json.dumps({"output": str(result.path), **result.info}, indent=1))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(render_table(result.report, "OpenVINO vs PyTorch"))
        weights = result.info["weights"]
        kept = weights.get("kept_float")
        what = (f"{weights['matrices']} weight matrices in {weights['mode']}"
                + (f" ({kept['count']} kept float)" if kept else "") + ", activations per group of "
                f"{weights['activations']['group_size']}" if weights["mode"] != "none" else "float32 weights")
        if weights.get("bf16"):  # --precision mixed
            what += " (" + ", ".join(f"{n} {kind} in bf16" for kind, n in weights["bf16"].items()) + ")"
        attention = result.info["attention"]
        if result.info.get("compile_config"):
            what += f"; compile with {result.info['compile_config']}"
        console.print(f"[green]wrote[/green] {result.path} ({attention} attention, {what}; validated with "
                      f"{result.info['validated_with']})",
                      soft_wrap=True)
    if not result.passed:
        console.print(f"[red]validation failed:[/red] {result.report.failure_message()}", soft_wrap=True)
        sys.exit(1)
