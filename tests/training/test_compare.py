"""opengallery compare on a tiny budget: table, plot, cache and the kept discussion."""

from pathlib import Path

from training.cli import compare_main
from training.compare import DISCUSSION_MARKER


def test_compare_writes_table_plot_and_keeps_discussion(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "protocol: mnist5k\nwidth: 4\nembedding_dim: 8\nepochs: 1\nmax_steps: 3\n"
        "batch_size: 16\nthreads: 1\n"
    )
    results, plot = tmp_path / "results.md", tmp_path / "plot.png"
    args = [
        "--config",
        str(config),
        "--losses",
        "softmax,eos",
        "--seeds",
        "0,1",
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(results),
        "--plot",
        str(plot),
    ]
    assert compare_main(args) == 0
    text = results.read_text()
    # one table per gallery setting: closed world, then open world (mnist5k enrols 8 and 9)
    closed, open_world = text.split("## Open-world gallery")
    assert "## Closed-world gallery" in closed
    for section in (closed, open_world):
        rows = [line for line in section.splitlines() if line.startswith(("| softmax", "| eos"))]
        assert len(rows) == 2 and all(line.count("±") == 7 for line in rows)
    assert "enrols the 2 unknown classes" in open_world
    assert plot.stat().st_size > 0
    assert (tmp_path / "plot_open.png").stat().st_size > 0
    results.write_text(text.replace("(discussion to be written)", "Hand-written words."))
    checkpoints = sorted((tmp_path / "runs").rglob("checkpoint.pt"))
    assert len(checkpoints) == 4
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    assert compare_main(args) == 0  # from the cache: nothing retrained
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    regenerated = results.read_text()
    assert DISCUSSION_MARKER in regenerated and "Hand-written words." in regenerated


def test_compare_rejects_unknown_loss(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert compare_main(["--losses", "softmax,nope", "--runs", str(tmp_path)]) == 2
    assert "unknown loss 'nope'" in capsys.readouterr().err
