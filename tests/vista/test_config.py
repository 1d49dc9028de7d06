"""params.yaml -> typed settings; profiles and overrides; errors that name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT
from vista.config import ParamsError, load_params, validate_params

PARAMS = ROOT / "params.yaml"


def test_repo_params_validate_and_smoke_profile_shrinks() -> None:
    p = load_params(PARAMS)
    s = load_params(PARAMS, profile="smoke")
    assert s.train.epochs < p.train.epochs and s.data.num_train < p.data.num_train
    assert s.model.name == p.model.name


def test_one_mlflow_experiment_per_dataset_unless_named() -> None:
    assert load_params(PARAMS).experiment_name() == "vista/synthetic"
    assert load_params(PARAMS, ["data.dataset=camvid"]).experiment_name() == "vista/camvid"
    assert load_params(PARAMS, ["data.dataset=camvid", "tracking.experiment=mine"]).experiment_name() == "mine"
    with pytest.raises(ParamsError, match="tracking.experiment"):
        load_params(PARAMS, ["tracking.experiment=''"])


def test_profile_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISTA_PROFILE", "smoke")
    assert load_params(PARAMS).data.image_size == (64, 64)
    monkeypatch.setenv("VISTA_PROFILE", "nosuch")
    with pytest.raises(ParamsError, match="profile 'nosuch'.*have: \\['camvid', 'smoke'\\]"):
        load_params(PARAMS)


def test_overrides_are_typed_and_applied_after_the_profile() -> None:
    p = load_params(
        PARAMS,
        [
            "train.epochs=3",
            "train.lr=1e-3",
            "model.attention.dilations=[1, 2, 4]",
            "model.attention.rank=0",
            "model.attention.draws_on=device",
            "model.tasks=[seg]",
        ],
        profile="smoke",
    )
    assert p.train.epochs == 3 and p.train.lr == 1e-3
    assert p.model.attention.dilations == (1, 2, 4) and p.model.attention.rank == 0
    assert p.model.attention.overrides()["draws_on"] == "device"
    assert p.model.tasks == ("seg",)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochz=3", r"train\.epochz=3: Extra inputs are not permitted"),
        ("train.epochs=zero", r"train\.epochs='zero'"),
        ("train.epochs=0", r"train\.epochs=0: Input should be greater than or equal to 1"),
        ("model.attention.rank=-1", r"model\.attention\.rank=-1"),
        ("model.attention.draws_on=gpu", r"model\.attention\.draws_on='gpu'"),
        ("model.tasks=[depth, depth]", r"model\.tasks=\['depth', 'depth'\]"),
        ("model.output_stride=12", r"model\.output_stride=12"),
        ("train.epochs", r"expected key=value"),
        ("train..lr=1", r"dotted keys"),
        ("train.lr.x=1", r"train\.lr is not a section"),
        # ranges that used to validate and fail late (after Ray start-up), or pad images to gigabytes
        ("model.attention.kernel_size=0", r"model\.attention\.kernel_size=0"),
        ("model.attention.dilations=[0, 2]", r"model\.attention\.dilations=\[0, 2\]: .*each >= 1"),
        ("model.attention.dilations=[]", r"model\.attention\.dilations=\[\]: .*one or more"),
        ("loader.crop_size=[0, 0]", r"loader\.crop_size\.0=0: Input should be greater than or equal to 16"),
        ("loader.crop_size=[9999, 9999]", r"loader\.crop_size\.0=9999: Input should be less than or equal to 4096"),
        ("loader.scale_range=[-1, 2]", r"loader\.scale_range=\[-1, 2\]: .*0 < min <= max"),
        ("loader.scale_range=[2, 1]", r"loader\.scale_range=\[2, 1\]: .*0 < min <= max"),
        ("data.image_size=[0, 0]", r"data\.image_size\.0=0"),
        ("train.resources_per_worker={CPU: -1}", r"train\.resources_per_worker\.CPU=-1"),
        ("tune.trial_resources={CPU: -0.5}", r"tune\.trial_resources\.CPU=-0\.5"),
        # accepted before, then failed ~1 min later at step 1, or never (a weight that flips a loss)
        ("train.lr=inf", r"train\.lr='inf': Input should be a finite number"),
        ("train.lr_mult=.inf", r"train\.lr_mult=inf: Input should be a finite number"),
        ("train.weight_decay=.nan", r"train\.weight_decay=nan: Input should be a finite number"),
        ("train.loss_weights={depth: -1}", r"train\.loss_weights\.depth=-1: .*greater than or equal to 0"),
        ("train.loss_weights={seg: .nan}", r"train\.loss_weights\.seg=nan: Input should be a finite number"),
        # a 309-character alias bomb grew past 5 GB; 5000-deep nesting ended in a RecursionError
        ("model.attention.dilations=" + "&a [x, x]", r"override model\.attention\.dilations: YAML anchors and aliases"),
        ("train.lr=*a", r"override train\.lr: YAML anchors and aliases"),
        ("train.lr=" + "[" * 5000 + "]" * 5000, r"override train\.lr: nested deeper than 16 levels"),
        ("eval.device=gpu", r"eval\.device='gpu'"),
    ],
)
def test_bad_overrides_name_key_and_value(override: str, match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        load_params(PARAMS, [override])


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"model: [unclosed\n", "bad.yaml: not valid YAML"),
        (b"- a\n- b\n", "expected a mapping"),
        (b"# nothing but a comment\n", "bad.yaml: the params file is empty"),
        (b"train:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 1.0\n", "bad.yaml: not valid YAML .*duplicate key 'lr'"),
        (b"train: \xff\xfe\n", "bad.yaml: "),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ParamsError, match=match):
        load_params(bad)


def test_dump_round_trips_for_workers_and_flattens() -> None:
    p = load_params(PARAMS)
    assert validate_params(p.model_dump()) == p
    flat = p.flatten()
    assert flat["train.lr"] == p.train.lr and flat["model.attention.rank"] == p.model.attention.rank
    assert not any(k.startswith("profiles") for k in flat)


def test_project_paths_are_anchored_at_the_dvc_root_when_dvc_runs_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued or --temp DVC experiment runs its command in a copy of the project (cwd) and sets $DVC_ROOT to
    the project: relative paths go to the project; without DVC_ROOT, to the working directory."""
    from vista.config import project_path

    project = tmp_path.resolve()
    copy = project / ".dvc" / "tmp" / "exps" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert project_path("runs/ray") == copy / "runs" / "ray"
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert project_path("runs/ray") == project / "runs" / "ray"
    assert project_path(".") == project
    assert project_path(tmp_path / "elsewhere") == project / "elsewhere"  # absolute: as it is
    monkeypatch.setenv("DVC_ROOT", "")  # empty: not set
    assert project_path("mlflow.db") == copy / "mlflow.db"
