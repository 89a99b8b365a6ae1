"""The commands' exit codes and messages for good and bad input."""

from pathlib import Path

import pytest
from PIL import Image

from opengallery.cli import main
from training.trainer import load_checkpoint

TINY = [
    "--width",
    "4",
    "--embedding-dim",
    "8",
    "--epochs",
    "1",
    "--max-steps",
    "2",
    "--batch-size",
    "16",
    "--no-progress",
    "--set",
    "threads=1",
]


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


def test_unknown_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--loss", "triplet", "--out", str(tmp_path / "r"), *TINY]) == 2
    err = _err(capsys)
    assert "opengallery train: error: loss must be one of" in err and "'triplet'" in err
    assert not (tmp_path / "r").exists()


def test_bad_set_and_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(tmp_path), "--set", "colour=L"]) == 2
    assert "unknown configuration field 'colour'" in _err(capsys)
    assert main(["train", "--out", str(tmp_path), "--set", "no-equals"]) == 2
    assert "FIELD=VALUE" in _err(capsys)


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["train", "--protocol", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), *TINY]
    )
    assert code == 2
    assert "nowhere: data folder does not exist" in _err(capsys)


def _folder(root: Path) -> None:
    for subject in ("a", "b"):
        for i in range(3):
            path = root / "known" / subject / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (20, 20), 40 * i).save(path)
    (root / "negative").mkdir()
    Image.new("L", (20, 20), 9).save(root / "negative" / "n.png")


def test_empty_class_and_corrupt_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _folder(tmp_path / "d")
    (tmp_path / "d" / "known" / "c").mkdir()
    assert (
        main(["train", "--protocol", str(tmp_path / "d"), "--out", str(tmp_path / "r"), *TINY]) == 2
    )
    assert "known/c: empty class" in _err(capsys)
    (tmp_path / "d" / "known" / "c" / "x.jpg").write_bytes(b"not a jpeg at all")
    assert (
        main(["train", "--protocol", str(tmp_path / "d"), "--out", str(tmp_path / "r"), *TINY]) == 2
    )
    assert "x.jpg: cannot read this image" in _err(capsys)


def test_folder_training_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _folder(tmp_path / "d")
    args = [
        "train",
        "--protocol",
        str(tmp_path / "d"),
        "--loss",
        "garbage",
        "--network",
        "resnet",
        "--set",
        "image_size=16",
        "--set",
        "color=L",
        "--out",
        str(tmp_path / "r"),
        *TINY,
    ]
    assert main(args) == 0
    assert load_checkpoint(tmp_path / "r")["epoch"] == 1
    assert main(args) == 2  # the run exists
    assert "--resume" in _err(capsys)
    assert (
        main(["train", "--out", str(tmp_path / "r"), "--resume", "--epochs", "2", "--no-progress"])
        == 0
    )
    assert load_checkpoint(tmp_path / "r")["epoch"] == 2


def test_evaluate_and_export_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path / "none")]) == 2
    assert "no such run or bundle directory" in _err(capsys)
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "no checkpoint" in _err(capsys)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch mnist5k run, trained by the command."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--loss", "mel", "--out", str(run), *TINY]) == 0
    return run


def test_export_parity_failure_is_one_line_naming_the_option(
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import training.export

    monkeypatch.setattr(training.export, "parity_max_abs_diff", lambda *args: 2.1e-4)
    capsys.readouterr()
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "b")]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and err.startswith("opengallery export: error: ")
    assert "2.10e-04" in err and "1.0e-04" in err and "--tolerance" in err
    assert not (tmp_path / "b").exists()
    # The option does what the message says.
    code = main(["export", str(tiny_run), "--out", str(tmp_path / "b"), "--tolerance", "3e-4"])
    assert code == 0
    assert "parity max |diff| 2.10e-04" in capsys.readouterr().out


def test_export_to_an_existing_bundle_names_the_flag_before_any_work(
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import training.export

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run was loaded before --out was checked")

    monkeypatch.setattr(training.export, "load_run", no_work)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "b")]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1
    assert "already exists and is not empty; pass --overwrite" in err
    assert "overwrite=True" not in err


def test_evaluate_a_folder_bundle_without_data_says_to_pass_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.testing import make_random_bundle

    # A bundle whose protocol is not built in (here "none"): its images are the user's own.
    bundle = make_random_bundle(tmp_path / "bundle", calibration_size=16)
    assert main(["evaluate", str(bundle.path), "--out", str(tmp_path / "eval")]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and "pass the folder with --data ROOT" in err
    assert not (tmp_path / "eval").exists()


def test_a_calibration_set_too_small_for_fpir_001_is_one_warning_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mnist5k's calibration set: the 500 validation unknowns, fewer than 10/0.01 = 1000.
    needs = "500 non-mated searches, too few for FPIR 0.01 (needs 10/0.01 = 1000), "
    needs += "FPIR 0.001 (needs 10/0.001 = 10000)"

    def warning_lines(command: str) -> list[str]:
        captured = capsys.readouterr()
        assert "Warning:" not in captured.err and "warnings.warn" not in captured.err
        lines = [line for line in captured.err.splitlines() if "warning" in line.lower()]
        assert all(line.startswith(f"opengallery {command}: warning: ") for line in lines)
        return lines

    assert main(["train", "--loss", "mel", "--out", str(tmp_path / "run"), *TINY]) == 0
    (line,) = warning_lines("train")
    assert "validation unknowns" in line and needs in line
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "b")]) == 0
    (line,) = warning_lines("export")
    assert needs in line and '"supported": false' in line
    assert main(["evaluate", str(tmp_path / "b"), "--out", str(tmp_path / "eval")]) == 0
    closed, opened = warning_lines("evaluate")
    assert closed.startswith("opengallery evaluate: warning: closed_world: ") and needs in closed
    # open world: calibrated on validation negatives (200) and known images (600)
    assert opened.startswith("opengallery evaluate: warning: open_world: the calibration set ")
    assert "800 non-mated searches, too few for FPIR 0.01 (needs 10/0.01 = 1000)" in opened
