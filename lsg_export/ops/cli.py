"""`lsg-export build-ops`: build the ONNX Runtime custom-op library and print its path.

Registered in lsg_export/cli.py with `main.add_command(build_ops_command)`."""
import click

from ..errors import user_errors


@click.command("build-ops")
@click.option("--cuda/--no-cuda", default=None,
              help="Build the CUDA kernel too (--cuda needs nvcc, not a GPU) "
                   "[default: when nvcc and a GPU are both found].")
@click.option("--force", is_flag=True, help="Rebuild even if the cached build is up to date.")
@click.option("--verbose", is_flag=True, help="Show the CMake output.")
@user_errors
def build_ops_command(cuda, force, verbose):
    """Build the custom-op library (ai.lsg.LSGAttention, ai.lsg.BlockSparseAttention) with CMake and print its path.

    The build is cached under $LSG_EXPORT_CACHE (default ~/.cache/lsg-export) and redone only when
    the sources change. ONNX Runtime headers: $ORT_INCLUDE_DIR, else fetched once with npm."""
    from .build import build_ops

    click.echo(str(build_ops(cuda=cuda, force=force, verbose=verbose)))
