"""The `vista` command line. Settings come from params.yaml only: `--set key=value` and `--profile`
override it, validated the same way."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.mlflow_ui import announce, serve
from pipelines.ports import port_is_free
from vista.config import ParamsError, load_params, parse_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, help="VISTA-Net training pipeline.")
console = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="settings file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, e.g. train.epochs=2")]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", envvar="VISTA_PROFILE", help="profile from params.yaml", show_envvar=True)
]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Ray's own logs and every worker's output too (default: one line per epoch)"),
]


def _fail(err: BaseException | str, code: int = 1) -> typer.Exit:
    """Print one ``error:`` line (credentials in URIs redacted, no markup read from the message); the exit to raise."""
    from rich.markup import escape

    from vista.tracking import redact

    console.print(f"[red]error:[/] {escape(redact(str(err)))}")
    return typer.Exit(code)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are about the input or the environment (bad data, missing files, a dead server):
    one ``error:`` line, no traceback. Anything else is a bug and keeps its traceback."""
    import tarfile

    from vista.data.manifest import PrepareError
    from vista.data.shards import ShardError

    errors: list[type[BaseException]] = [PrepareError, ShardError, ParamsError, OSError, ValueError, RuntimeError]
    errors.append(tarfile.TarError)
    try:
        from mlflow.exceptions import MlflowException

        errors.append(MlflowException)
    except ImportError:
        pass
    return tuple(errors)


def _logging(level: int = logging.INFO) -> None:
    """Log records of vista and the libraries as ``LEVEL name: message`` on stderr."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def _one_line_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Expected failures (:func:`_expected_errors`, and ``extra``) inside the block exit 1 with one
    ``error:`` line; anything else keeps its traceback."""
    try:
        yield
    except Exception as err:
        if isinstance(err, (*extra, *_expected_errors())):
            raise _fail(err) from None
        raise


def _load(params: Path, overrides: list[str] | None, profile: str | None):  # noqa: ANN202
    try:
        return load_params(params, overrides or [], profile)
    except ParamsError as err:
        raise _fail(err, 2) from None


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train on the shards with Ray Train; writes models/best.pt, model_card.json, samples.png."""
    _logging()
    _stage("train", params, set_, profile, verbose=verbose)


def _stage(module: str, params: Path, overrides: list[str] | None, profile: str | None, **kwargs: object) -> None:
    """Run ``pipelines.<module>.run``; expected failures (bad data, missing inputs) exit 1 with the message."""
    import importlib

    p = _load(params, overrides, profile)
    stage = importlib.import_module(f"{__package__}.{module}")
    with _one_line_errors():
        stage.run(p, console, **kwargs)


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, profile: ProfileOpt = None) -> None:
    """Validate the raw dataset into data/prepared/<dataset>/manifest.parquet."""
    _stage("prepare", params, set_, profile)


@app.command()
def shard(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, profile: ProfileOpt = None) -> None:
    """Pack the manifest's samples into WebDataset shards under data/shards/<dataset>/."""
    _stage("shard", params, set_, profile)


@app.command("evaluate")
def evaluate_(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, profile: ProfileOpt = None) -> None:
    """Measure models/best.pt on the eval split: eval/metrics.json and eval/plots/."""
    _stage("evaluate", params, set_, profile)


@app.command("run")
def run_(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """train -> evaluate -> register in one go (the stages after `shard`): what `ray job submit` runs."""
    _logging()
    for stage in ("train", "evaluate", "register"):
        console.rule(f"[bold]{stage}")
        _stage(stage, params, set_, profile, **({"verbose": verbose} if stage == "train" else {}))


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, profile: ProfileOpt = None) -> None:
    """Register models/best.pt in the MLflow Model Registry; alias challenger, champion through the gate."""
    _stage("register", params, set_, profile)


tune_app = typer.Typer(help="Ray Tune sweeps over params.yaml settings (params.tune).", no_args_is_help=False)
app.add_typer(tune_app, name="tune")


@tune_app.callback(invoke_without_command=True)
def tune(
    ctx: typer.Context, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, profile: ProfileOpt = None
) -> None:
    """Run (or resume) the sweep in params.tune: tune/results.parquet, tune/best_params.yaml, MLflow runs."""
    if ctx.invoked_subcommand is None:
        _logging(logging.WARNING)
        _stage("tune", params, set_, profile)


@tune_app.command("promote")
def tune_promote(
    params: ParamsOpt = Path("params.yaml"),
    best: Annotated[Path, typer.Option(help="the sweep's best settings")] = Path("tune/best_params.yaml"),
    write: Annotated[bool, typer.Option("--write", help="write the best values into params.yaml")] = False,
) -> None:
    """Show how the sweep's best settings differ from params.yaml; --write applies them (comments kept)."""
    from .promote import promote

    try:
        promote(params, best, write, console)
    except (OSError, ParamsError) as err:
        raise _fail(err) from None


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="a study of params.yaml `studies`, e.g. camvid or synthetic")],
    smoke: Annotated[bool, typer.Option("--smoke", help="seconds-long check: smoke profile, one seed")] = False,
    seeds: Annotated[
        list[int] | None,
        typer.Option("--seeds", metavar="SEED", help="only these of the study's seeds (repeat the option)"),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Equal-budget comparison: every model × seed of the study, then a mean ± std table and curves."""
    _logging()
    from . import study as stage

    p = _load(params, None, None)
    with _one_line_errors():
        overrides = dict(parse_overrides(set_ or []))
        stage.run(p, name, smoke, console, overrides, seeds, verbose=verbose)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files")],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="checkpoint path, or a registered model: models:/NAME@champion, models:/NAME/3"
        ),
    ] = "models/best.pt",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("predictions"),
    max_side: Annotated[
        int, typer.Option("--max-side", help="larger images are downscaled to this long side (bounded memory)")
    ] = 2048,
    params: Annotated[
        Path, typer.Option("--params", "-p", help="settings file (its tracking.uri resolves models:/ URIs)")
    ] = Path("params.yaml"),
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA when there is one, else CPU), cpu, cuda or cuda:N")
    ] = "auto",
) -> None:
    """Colourised depth / segmentation / normals of a trained model for IMAGES."""
    from vista.data.sources.base import SampleError

    from . import predict as stage

    uri = None
    if "://" in model or model.startswith("models:/"):
        from vista.tracking import tracking_uri

        uri = tracking_uri(_load(params, None, None).tracking.uri if params.is_file() else None)
    with _one_line_errors(SampleError):
        stage.run(images, model, out, console, tracking_uri=uri, max_side=max_side, device=device)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
    params: ParamsOpt = Path("params.yaml"),
    workers: Annotated[
        int, typer.Option(min=1, help="server processes (one serves a local user; each takes seconds to start)")
    ] = 1,
) -> None:
    """Open the MLflow UI on 127.0.0.1 over the project's tracking backend (Ctrl-C or SIGTERM stops it);
    prints the link to these settings' runs table once the server answers."""
    import sys
    import threading

    from vista.tracking import redact, tracking_uri

    p = _load(params, None, None)
    uri = tracking_uri(p.tracking.uri)
    if not port_is_free(port):
        raise _fail(f"port {port} of 127.0.0.1 is in use (another server?); pick another with --port", 2)
    base, experiment = f"http://127.0.0.1:{port}", p.experiment_name()
    console.print(f"MLflow UI on {base} over {redact(uri)} (these settings' runs: {experiment})")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]  # mlflow's default is 4 uvicorn workers
    threading.Thread(target=announce, args=(base, experiment, console), daemon=True).start()
    code = serve(cmd, console)
    if code:
        raise _fail(f"the MLflow server exited with code {code} (its output is above)", code)


@app.command()
def datasets(name: Annotated[str | None, typer.Argument(help="dataset name")] = None) -> None:
    """List the dataset adapters, or show where to get one and the layout it expects."""
    import importlib

    from vista.data.sources.base import DATASETS

    if name is None:
        for n in DATASETS:
            console.print(n)
        return
    if name not in DATASETS:
        raise _fail(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}", 2)
    module = importlib.import_module(f"vista.data.sources.{name}")
    console.print((module.__doc__ or "").strip())
    console.print()
    console.print(module.DOWNLOAD)


@app.command()
def models() -> None:
    """List the registered model names."""
    from vista.models import list_models

    for name in list_models():
        console.print(name)


if __name__ == "__main__":
    app()
