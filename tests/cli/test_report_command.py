"""traincraft report (traincraft.cli.report): its answer for a folder that cannot be reported.
The page it rebuilds is tested with the report itself, in tests/test_report.py."""

from traincraft.cli import main


def report_main(argv):
    """``traincraft report ...`` as the command line runs it (under its error policy)."""
    return main(["report", *argv])


def test_report_main_says_what_is_missing(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: run folder {tmp_path / 'nowhere'} does not exist"
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path} is not a run folder (no data.json, "
                                               "metrics.csv or checkpoints/) and holds no runs")
    (tmp_path / "data.json").write_text("{}")  # a run that stopped before its first epoch
    assert report_main([str(tmp_path)]) == 2
    assert "metrics.csv is missing" in capsys.readouterr().err


def test_report_of_a_folder_of_runs_takes_the_newest_with_metrics(tmp_path, capsys):
    runs = tmp_path / "runs" / "name"
    for name in ("20261206-010000", "20261206-020000"):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n2,0.25\n")
    (runs / "20261206-030000").mkdir()  # started, no epoch yet
    (runs / "20261206-030000" / "data.json").write_text("{}")
    assert report_main([str(runs)]) == 0
    err = capsys.readouterr().err
    assert f"{runs} holds runs: using the newest, {runs / '20261206-020000'}" in err
    assert (runs / "20261206-020000" / "report.html").is_file()
    assert not (runs / "20261206-010000" / "report.html").exists()
