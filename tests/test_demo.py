"""The demo chain (simulate -> train -> evaluate -> pretrained side by side) on tiny settings."""

import json

import darklens.demo as demo
from darklens.cli import main


def test_demo_writes_reports_and_prints_where(tmp_path, capsys, tiny_demo):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    d = tmp_path / "demo"
    for name in ("report.json", "report.md", "roc.png", "confusion.png", "calibration.png",
                 "examples.png", "demo.json"):
        assert (d / name).stat().st_size > 0, name
    report = json.loads((d / "report.json").read_text())
    assert report["n"] == 18  # 6 test images per class
    assert out[-1].endswith(f"{d / 'report.md'} (numbers: {d / 'report.json'})")
    assert "AUC macro" in "\n".join(out)
    # every shipped pretrained model was scored beside the demo model
    summary = json.loads((d / "demo.json").read_text())
    from darklens.checkpoint import list_pretrained

    assert set(summary["macro_auc"]) == {"demo", *(p["name"] for p in list_pretrained())}


def test_side_by_side_formats_missing_auc():
    report = {"n": 3, "accuracy": 1.0, "macro_f1": 1.0, "ece": 0.0,
              "auc": {"no": None, "sphere": 1.0, "vort": 1.0, "micro": 1.0, "macro": 1.0},
              "ci95": {"accuracy": [1, 1], "macro_auc": [1.0, 1.0]}}
    table = demo.side_by_side({"demo": report, "pretrained": {"x": report}})
    lines = table.splitlines()
    assert "pretrained:x" in lines[0]
    assert [ln for ln in lines if ln.startswith("AUC no")][0].split()[-2:] == ["n/a", "n/a"]
