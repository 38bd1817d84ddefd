"""`lsg-export deploy` and `lsg-export serve`.

Registered in lsg_export/cli.py with `main.add_command(deploy_command)` and `main.add_command(serve_command)`."""
import json

import click

from ..errors import user_errors

_UNVALIDATED = click.option("--allow-unvalidated", is_flag=True,
                            help="Accept an export whose validation failed or never ran (export.json).")
_NAME = click.option("--name", help="Model name (Triton, KServe, the v2 URLs) [default: from the export folder].")


@click.command("deploy", context_settings={"show_default": True})
@click.argument("export", required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Repository folder [default: EXPORT-deploy].")
@_NAME
@click.option("--max-batch-size", default=8, type=int, help="Triton max_batch_size (0: no batching, full dims).")
@click.option("--instances", default=1, type=int, help="Model instances per server (Triton instance_group count).")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "gpu"]), help="KIND_CPU or KIND_GPU instances.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, help="Triton's dynamic batcher.")
@click.option("--max-queue-delay-us", default=100, type=int, help="Dynamic batching: longest wait for a batch, µs.")
@_UNVALIDATED
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def deploy_command(export, output, as_json, **options):
    """Write a Triton model repository (onnxruntime backend) for EXPORT, a folder `lsg-export onnx`
    wrote (default: the last one from here), with a KServe InferenceService manifest and a README. An
    encoder-decoder export becomes a summariser: its graph models behind a python-backend model that takes
    text and returns the summary (greedy or beam search, as its generation_config.json says).

    \b
    Examples:
      lsg-export deploy minilm-onnx -o triton-repo
      lsg-export deploy minilm-onnx -o triton-repo --device gpu --instances 2 --max-batch-size 16
      lsg-export deploy --name minilm --no-dynamic-batching --force -o triton-repo
    """
    from rich.console import Console

    from ..cli_state import given_or_last
    from .repository import deploy

    console = Console(stderr=True)
    export = given_or_last(export, "onnx", console)
    with console.status("writing the repository"):
        result = deploy(export, output, **options)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        library = f", custom-op library {result.op_library}" if result.op_library else ""
        console.print(f"[green]wrote[/green] {result.path}: model {result.name} ({len(result.files)} files{library}); "
                      f"see {result.path}/README.md", soft_wrap=True)


@click.command("serve", context_settings={"show_default": True})
@click.argument("export", required=False)
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, type=int, help="HTTP port.")
@click.option("--grpc-port", default=8081, type=int, help="gRPC port.")
@click.option("--workers", default=1, type=int, help="HTTP server processes (each with its own session).")
@click.option("--max-batch-tokens", default=16384, type=int,
              help="Embeddings: pack concurrent requests into ONNX Runtime runs of at most this many padded tokens "
                   "(0: each request alone).")
@click.option("--max-concurrent-requests", default=512, type=int,
              help="POST requests in progress beyond which a request gets HTTP 429 (0: no limit).")
@click.option("--truncate", is_flag=True, help="Embeddings: cut a text longer than the export's length instead of "
                                               "refusing it.")
@click.option("--max-request-bytes", default=16 * 2 ** 20, type=int, help="Larger request bodies get HTTP 413.")
@_NAME
@_UNVALIDATED
@user_errors
def serve_command(export, name, allow_unvalidated, max_batch_tokens, max_concurrent_requests, truncate,
                  max_request_bytes, **options):
    """Serve EXPORT (default: the last `lsg-export onnx` output from here) with ONNX Runtime behind
    KServe's ModelServer: Open Inference Protocol v2 over HTTP and gRPC, the same model name, inputs
    and outputs as the `lsg-export deploy` repository, plus a `text` input (BYTES) tokenized by the
    server. An encoder-decoder export is served as a summariser: the generate extension
    (POST /v2/models/NAME/generate, {"text_input": ..., "parameters": {"max_new_tokens": .., "num_beams": ..}})
    and infer with a `text` input, both returning `text_output`. An export with a sentence_embedding output
    (`lsg-export onnx --pooling`) is also an OpenAI-compatible embedding server: POST /v1/embeddings,
    GET /v1/models, batched by a token budget. Prometheus metrics on /metrics. Stops on Ctrl-C / SIGTERM.

    \b
    Examples:
      lsg-export serve minilm-onnx
      curl localhost:8080/v2/models/minilm-onnx
      curl -d '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a long report"]}]}' \\
        localhost:8080/v2/models/minilm-onnx/infer
      lsg-export serve minilm-onnx --host 0.0.0.0 --port 9000 --grpc-port 9001 --workers 2
      lsg-export serve bart-onnx
      curl -d '{"text_input": "a long report", "parameters": {"num_beams": 4}}' \\
        localhost:8080/v2/models/bart-onnx/generate
      curl -d '{"model": "minilm-onnx", "input": ["a long report"]}' localhost:8080/v1/embeddings
      lsg-export serve minilm-onnx --max-batch-tokens 32768 --max-concurrent-requests 64 --truncate
    """
    from rich.console import Console

    from ..cli_state import given_or_last
    from .embeddings import EMBEDDING_OUTPUT, ServingOptions, export_outputs
    from .server import make_model, serve

    serving = ServingOptions(max_batch_tokens, max_concurrent_requests, truncate, max_request_bytes).check()
    console = Console(stderr=True)
    export = given_or_last(export, "onnx", console)
    with console.status("loading the model"):
        model = make_model(export, name, allow_unvalidated)
    host = f"[{options['host']}]" if ":" in options["host"] else options["host"]
    text = ", or text" if model.has_text else ""
    generate = f", generate: POST .../v2/models/{model.name}/generate" if hasattr(model, "summarise") else ""
    console.print(f"serving [bold]{model.name}[/bold] ({model.export.meta.get('task')}, up to {model.seq} tokens"
                  f"{text}): http://{host}:{options['port']}/v2/models/{model.name}, "
                  f"gRPC {host}:{options['grpc_port']}{generate}",
                  soft_wrap=True)
    if EMBEDDING_OUTPUT in export_outputs(model.export):
        batching = f"batches of up to {max_batch_tokens} tokens" if max_batch_tokens else "no batching"
        console.print(f"embeddings (OpenAI API): http://{host}:{options['port']}/v1/embeddings, {batching}",
                      soft_wrap=True)
    serve(model, serving=serving, **options)
