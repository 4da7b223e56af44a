"""Review fixes: bad inputs and bad output paths are one-line errors, never tracebacks.

* a 1-D .npy of strings is the reader's one-line error (inspect lists it, --skip-bad skips it);
* output paths (predict --out, export --onnx, evaluate --out, simulate OUT) are checked before
  any work, and an OSError that still escapes is printed as one line by the CLI;
* a malformed YAML value in --set is one line naming the key; "an int", not "a int";
* re-using an evaluate --out folder removes the old report.json before writing anything.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluate import lens_like, read_csv, tiny_checkpoint, write_dataset

from darklens.cli import main
from darklens.errors import DarklensError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a model spec that cannot be loaded: an output-path error that names the output (and not
# this) proves the path was checked before the model was even opened
MISSING_MODEL = "/nonexistent/darklens-run"


def one_error_line(capsys) -> str:
    """The single stderr line of a failed command (a traceback would be many lines)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("darklens: error: ")
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("fix-run") / "run")


# --- 3. a 1-D non-numeric .npy ------------------------------------------------------------


@pytest.mark.parametrize("values", [list("abcde"), [b"x"] * 17, list("abcd")],
                         ids=["str-square+1", "bytes-square+1", "str-square"])
def test_one_dimensional_strings_are_a_reader_error(tmp_path, values):
    from darklens.data import read_image

    path = tmp_path / "words.npy"
    np.save(path, np.array(values))
    with pytest.raises(DarklensError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "dtype" in message and "\n" not in message


def test_one_dimensional_numbers_still_unflatten(tmp_path):
    # Model II flat layout with the label appended must keep working after the dtype check
    from darklens.data import read_image

    pixels = np.arange(16, dtype=np.float32)
    np.save(tmp_path / "flat.npy", np.concatenate([pixels, [2.0]]).astype(np.float32))
    image, meta = read_image(tmp_path / "flat.npy")
    np.testing.assert_array_equal(image, pixels.reshape(4, 4))
    assert meta["embedded_label"] == 2.0


@pytest.fixture(scope="module")
def data_with_strings(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("strings") / "data", {"val": 2}, seed=5)
    np.save(root / "val" / "sphere" / "words.npy", np.array(list("abcde")))
    return root


def test_inspect_lists_string_file_as_problem(data_with_strings, capsys):
    assert main(["inspect", str(data_with_strings), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in report["problems"]] == ["val/sphere/words.npy"]
    assert report["n_images"] == 6


def test_predict_skip_bad_skips_string_file(run, data_with_strings, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code = main(["predict", str(run), str(data_with_strings), "--out", str(out),
                 "--skip-bad", "--device", "cpu"])
    assert code == 0
    paths, probs, _, _ = read_csv(out)
    assert len(paths) == 6 and not any(p.endswith("words.npy") for p in paths)
    assert "skipped" in capsys.readouterr().err


def test_predict_loose_string_file_is_one_line(run, tmp_path, capsys):
    bad = tmp_path / "words.npy"
    np.save(bad, np.array(list("abcde")))
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "p.csv"),
                 "--device", "cpu"]) == 2
    assert str(bad) in one_error_line(capsys)


# --- 4. output paths checked before the work ----------------------------------------------


def test_predict_out_is_a_folder(tmp_path, capsys):
    image = tmp_path / "x.npy"
    np.save(image, lens_like(np.random.default_rng(0), 0)[None])
    folder = tmp_path / "existing"
    folder.mkdir()
    assert main(["predict", MISSING_MODEL, str(image), "--out", str(folder)]) == 2
    line = one_error_line(capsys)
    assert str(folder) in line and "folder" in line and MISSING_MODEL not in line


def test_predict_out_parent_is_a_file(tmp_path, capsys):
    image = tmp_path / "x.npy"
    np.save(image, lens_like(np.random.default_rng(0), 0)[None])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["predict", MISSING_MODEL, str(image), "--out", str(blocker / "p.csv")]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and MISSING_MODEL not in line


def test_export_onnx_is_a_folder(tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    assert main(["export", MISSING_MODEL, "--onnx", str(folder)]) == 2
    line = one_error_line(capsys)
    assert str(folder) in line and MISSING_MODEL not in line
    assert list(folder.iterdir()) == []


def test_evaluate_out_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "report"
    blocker.write_text("keep me")
    data = tmp_path / "no-data"
    assert main(["evaluate", MISSING_MODEL, str(data), "--out", str(blocker)]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and MISSING_MODEL not in line
    assert blocker.read_text() == "keep me"


def test_simulate_out_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "dataset"
    blocker.write_text("keep me")
    assert main(["simulate", str(blocker), "--train", "1", "--val", "0", "--device", "cpu"]) == 2
    assert str(blocker) in one_error_line(capsys)
    assert blocker.read_text() == "keep me"


def test_simulate_out_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["simulate", str(blocker / "data"), "--train", "1", "--val", "0",
                 "--device", "cpu"]) == 2
    assert str(blocker) in one_error_line(capsys)


def test_cli_prints_escaped_oserror_as_one_line(monkeypatch, capsys):
    import darklens.evaluation

    def fail(model, onnx_path):
        raise PermissionError(13, "Permission denied", "/read-only/model.onnx")

    monkeypatch.setattr(darklens.evaluation, "export_onnx", fail)
    assert main(["export", "m", "--onnx", "/read-only/model.onnx"]) == 2
    assert one_error_line(capsys) == "darklens: error: /read-only/model.onnx: Permission denied"


# --- 5. --set values ----------------------------------------------------------------------


def test_malformed_yaml_in_set_is_one_line_naming_the_key(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--train", "1", "--val", "0", "--device", "cpu",
                 "--set", "sub_mass_fraction=[0.1,"]) == 2
    line = one_error_line(capsys)
    assert "sub_mass_fraction" in line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("like, word", [(3, "an int"), (1.5, "a float"), ([1.0, 2.0], "a list"),
                                        (True, "a bool")])
def test_type_error_uses_the_right_article(like, word):
    from darklens.config import coerce

    with pytest.raises(DarklensError, match=f"expected {word} "):
        coerce("[oops", like, "key")


def test_malformed_yaml_for_untyped_default_is_one_line():
    from darklens.config import coerce

    with pytest.raises(DarklensError, match="--set key="):
        coerce("[1,", None, "key")


# --- 11. a re-used evaluate folder ----------------------------------------------------------


def test_failed_evaluate_leaves_no_stale_report_json(run, tmp_path, monkeypatch):
    from darklens.evaluation import plots
    from darklens.evaluation.report import evaluate

    data = write_dataset(tmp_path / "data", {"val": 2}, seed=2)
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text('{"stale": true}\n')

    def broken(*args, **kwargs):
        raise RuntimeError("disk full half way")

    monkeypatch.setattr(plots, "plot_examples", broken)
    with pytest.raises(RuntimeError):
        evaluate(str(run), str(data), split="val", out=out, device="cpu", n_bootstrap=10,
                 progress=False)
    assert not (out / "report.json").exists()
    assert (out / "roc.png").exists()  # it failed after writing began, the case that matters

