"""The MLflow UI in a browser: `vista ui` over a backend with two trained runs and a registered model, driven
by Playwright with Debian's Chromium (headless, loopback only). Screenshots go to the test's tmp folder and,
when ``$VISTA_SCREENSHOTS`` is set, to that folder too."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import torch

from pipelines import evaluate, prepare, register, shard
from tests.helpers import smoke_params
from tests.helpers.ui import VistaUI
from vista import tracking
from vista.checkpoint import save_checkpoint
from vista.config import Params
from vista.data.webdata import data_version, eval_loader
from vista.engine import evaluate as measure
from vista.engine import train_one_epoch
from vista.recipe import build_model, run_name, task_metrics, training_parts
from vista.tracking import redacted_dump

pytestmark = pytest.mark.timeout(300)

MODELS = ("vista_r18", "baseline_r18")  # the two runs: the network and its peer without attention
METRIC = "val/seg/miou"  # compared between the runs
WAIT_MS = 60_000  # how long a page may take to show what is asserted (a loaded 2-core box)


def missing(what: str) -> None:
    """Fail in CI (``CI=true``), skip elsewhere, naming what is missing and how to get it."""
    if os.environ.get("CI") == "true":
        pytest.fail(what)
    pytest.skip(what)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        missing("Debian's Chromium is not on PATH: `apt-get install chromium` (.ci/run installs it)")
    return path  # type: ignore[return-value]


def train_and_log(p: Params, uri: str) -> tuple[str, str, dict[str, float]]:
    """One epoch of real training of the smoke model in this process (``vista.engine``, no Ray), tracked as
    `vista train` tracks it (run named by the settings, params, tags, dataset input, metrics of epochs 0
    and 1); leaves models/best.pt and the model card for `evaluate` and `register`. Returns
    ``(run name, run id, epoch 1's metrics)``."""
    shards = str(Path(p.data.shards_dir) / p.data.dataset)
    torch.manual_seed(p.train.seed)
    model = build_model(p)
    opt, sched, loss_fn, data, _steps = training_parts(p, model, shards)
    metrics, val = task_metrics(p), eval_loader(shards, "val", p.train.batch_size)
    name, version = run_name(p), data_version(shards)
    tags = {"dataset": p.data.dataset, "model": p.model.name, "data_version": version}
    run_id = tracking.start_run(uri, p.experiment_name(), name, p.flatten(), tags)
    tracking.log_dataset(uri, run_id, p.data.dataset, version, shards, "training")
    tracking.log_metrics(uri, run_id, {"epoch": 0, **measure(model, val, metrics)}, step=0)
    losses = train_one_epoch(model, data, opt, loss_fn, "cpu", sched)
    losses.pop("steps")
    row = {"epoch": 1, **{f"train/{k}": v for k, v in losses.items()}, **measure(model, val, metrics)}
    tracking.log_metrics(uri, run_id, row, step=1)
    tracking.end_run(uri, run_id)
    models = Path(p.train.models_dir)
    save_checkpoint(models / "best.pt", model, epoch=1, params=redacted_dump(p), metrics=row)
    card = {"run_name": name, "best_epoch": 1, "data": {"dataset": p.data.dataset, "version": version}}
    card["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
    (models / "model_card.json").write_text(json.dumps(card))
    return name, run_id, row


def loopback(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost")


def shots(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("VISTA_SCREENSHOTS"):
        folders.append(Path(os.environ["VISTA_SCREENSHOTS"]))
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
    return folders


def browse(
    page: Any, expect: Any, base: str, link: str, runs: dict[str, tuple[str, dict]], record: dict, out: list[Path]
) -> None:
    """The user's path; ``runs``: run name -> (run id, epoch 1's metrics); ``record``: what the last
    `vista register` wrote (models/registered.json)."""

    def screenshot(name: str) -> None:
        page.screenshot(path=out[0] / name)
        for folder in out[1:]:
            shutil.copy(out[0] / name, folder / name)

    # 1. the link `vista ui` printed: the experiment's runs table, both runs in it
    page.goto(link)
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    table = page.get_by_role("grid")
    for name in runs:
        expect(table.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(page.get_by_text("2 matching runs")).to_be_visible()
    screenshot("1_runs_table.png")

    # 2. select both runs, compare: both names, and the metric with each run's value
    boxes = table.get_by_role("checkbox", name=re.compile("toggle row selection"))
    expect(boxes).to_have_count(2)
    for box in boxes.all():
        box.check()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_role("heading", name="Comparing 2 Runs from 1 Experiment")).to_be_visible()
    names_row = page.get_by_role("row", name=re.compile(r"^Run Name:"))
    for name in runs:
        expect(names_row.get_by_role("cell", name=name, exact=True)).to_be_visible()
    order = [c.strip() for c in names_row.get_by_role("cell").all_inner_texts()]
    for section in ("Visualizations", "Parameters"):  # folded, so that the metrics table is in view
        page.get_by_role("button", name=section, exact=True).click()
    metric_names, metric_values = page.get_by_role("grid").nth(0), page.get_by_role("grid").nth(1)
    metric = metric_names.get_by_role("link", name=METRIC, exact=True)
    metric_names.scroll_into_view_if_needed()
    metric_values.hover()
    for _ in range(100):  # a scrolled table: rows are drawn as they come into view
        if metric.count() and inside(metric.bounding_box(), metric_names.bounding_box()):
            break
        page.mouse.wheel(0, 40)
        page.wait_for_timeout(50)
    page.mouse.wheel(0, -1)  # MLflow syncs the name column one scroll event late: this lines it up again
    expect(metric).to_be_visible()
    for run_id, _ in runs.values():  # the metric's link plots it for both runs
        assert run_id in metric.get_attribute("href")
    # the values in the metric's row (names and values are two grids; a row is a cell offset)
    values = metric.evaluate(
        """(a, grid) => { const top = a.closest('[style*="top"]').style.top;
        return [...grid.querySelectorAll('[style*="top"]')].filter(c => c.style.top === top).map(c => c.innerText) }""",
        metric_values.element_handle(),
    )
    shown = dict(zip(order, (float(v) for v in values), strict=True))
    assert shown == {name: pytest.approx(row[METRIC], abs=1e-3) for name, (_, row) in runs.items()}
    screenshot("2_compare.png")

    # 3. the registered model: `champion` on the version the gate promoted, not on the other
    champion = record["aliases"]["champion"]
    page.goto(f"{base}/#/models/{record['name']}")
    expect(page.get_by_role("heading", name=record["name"], exact=True)).to_be_visible()
    rows = {
        v: page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {v}", exact=True))
        for v in ("1", "2")
    }
    expect(rows[champion].get_by_role("status", name="champion", exact=True)).to_be_visible()
    expect(rows["2"].get_by_role("status", name="challenger", exact=True)).to_be_visible()  # registered last
    other = "2" if champion == "1" else "1"
    expect(rows[other]).to_be_visible()
    expect(rows[other].get_by_role("status", name="champion", exact=True)).to_have_count(0)
    screenshot("3_registered_model.png")


def inside(box: dict | None, frame: dict | None) -> bool:
    """``box`` lies within ``frame`` vertically (Playwright bounding boxes)."""
    return bool(box and frame) and frame["y"] <= box["y"] and box["y"] + box["height"] <= frame["y"] + frame["height"]


def test_compare_runs_and_see_the_champion_in_the_mlflow_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's path through the MLflow UI that `vista ui` serves: the link it prints opens the experiment
    on its runs table (not MLflow's GenAI overview) with both runs; both selected and compared show both
    run names and the values of val/seg/miou; the registered model shows `champion` on the version the
    gate promoted. Ctrl-C then stops `vista ui`, its server and the server's workers."""
    exe = chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("playwright is not installed: `.venv/bin/pip install -e '.[dev]'`")

    monkeypatch.chdir(tmp_path)  # evaluate and register read and write eval/ and models/ here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    dirs = [f"data.prepared_dir={tmp_path / 'prepared'}", f"data.shards_dir={tmp_path / 'shards'}"]
    dirs.append(f"train.models_dir={tmp_path / 'models'}")
    base = smoke_params(None, *dirs)
    tracking.experiment_id(uri, base.experiment_name())  # the backend exists before the server starts on it
    ui = VistaUI(uri)  # the server starts (the slowest step) while the data is made and the runs train
    threads = torch.get_num_threads()
    try:
        prepare.run(base)
        shard.run(base)
        torch.set_num_threads(1)  # training on one core, the server starting on the other
        runs: dict[str, tuple[str, dict[str, float]]] = {}
        records: list[dict] = []
        for model in MODELS:
            p = smoke_params(None, *[*dirs, f"model.name={model}"])
            name, run_id, row = train_and_log(p, uri)
            runs[name] = (run_id, row)
            evaluate.run(p)
            records.append(register.run(p))
        torch.set_num_threads(threads)
        # version 2 is challenger; champion only if its gate value beat version 1's by the margin
        first, record = (r["gate"] for r in records), records[-1]
        g1, g2 = first
        won = register.beats(g2["value"], g1["value"], g2["mode"], base.registry.min_delta)
        assert record["version"] == "2" and record["aliases"]["champion"] == ("2" if won else "1"), record
        assert record["gate"]["promoted"] is won

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=exe, headless=True, args=["--no-sandbox"] if os.geteuid() == 0 else []
            )
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.route(lambda url: not loopback(url), lambda route: route.abort())  # nothing leaves the box
            # MLflow's assistant panel opens itself on a first visit and covers a quarter of the page
            context.add_init_script(
                "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            )
            expect.set_options(timeout=WAIT_MS)
            page = context.new_page()
            line = ui.wait_for_line(f"runs of {base.experiment_name()}: ")  # printed once the server answers
            link = line.split(": ", 1)[1]
            browse(page, expect, ui.base, link, runs, record, shots(tmp_path))
            browser.close()
        ui.stop("SIGINT")
    finally:
        torch.set_num_threads(threads)
        ui.close()
