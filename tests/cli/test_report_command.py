"""traincraft report (traincraft.cli.report): its answer for a folder that cannot be reported.
The page it rebuilds is tested with the report itself, in tests/test_report.py."""

from traincraft.cli import main


def report_main(argv):
    """``traincraft report ...`` as the command line runs it (under its error policy)."""
    return main(["report", *argv])


def test_report_main_says_what_is_missing(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: run folder {tmp_path / 'nowhere'} not found"
    assert report_main([str(tmp_path)]) == 2
    assert "metrics.csv is missing" in capsys.readouterr().err
