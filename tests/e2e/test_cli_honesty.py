"""`anodet predict` and `anodet evaluate` name every pair they could not score, count them and exit non-zero only
when nothing was scored; progress bars are drawn on a terminal only."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap

import pandas as pd
import pytest

from anodet_core.demo_data import write_pair_folders
from flows.cli import main

MODEL = "anodfdnet:base"  # the shipped base model: no training needed, an empty store is enough
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _break(folder, how: str) -> None:
    """Damage one pair folder: ``cur`` not an image, ``his`` truncated, ``his-missing``, ``mask`` not an image."""
    if how == "cur":
        (folder / "cur.jpg").write_bytes(b"not an image")
    elif how == "his":
        data = (folder / "his.jpg").read_bytes()
        (folder / "his.jpg").write_bytes(data[: len(data) // 3])  # a capture cut off mid-transfer
    elif how == "his-missing":
        (folder / "his.jpg").unlink()
    elif how == "mask":
        (folder / "mask.png").write_bytes(b"\x89PNG garbage")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("honest-store"))


@pytest.fixture
def pairs(tmp_path):
    """Five pair folders (ids pair00000 ... pair00004), all good so far."""
    root = tmp_path / "pairs"
    write_pair_folders(str(root), 5, seed=3, width=200, height=120, anomaly_rate=0.5)
    return root


def _clean(err: str) -> None:
    assert "Traceback" not in err and " at 0x" not in err and "object at" not in err


def _match(lines: list[str], patterns: list[str]) -> None:
    """Each line fully matches its pattern (the cause in parentheses is the decoder's: any stable text)."""
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), (line, pattern)


UNDECODABLE = r"{}: cannot decode image \([^()]+\)"  # the file's name, then why
MISSING = re.escape("pair folder needs cur.* and his.*")


@pytest.mark.fault("cli_bad_pair")
def test_predict_names_each_failed_pair_counts_them_and_exits_0_when_one_was_scored(store, pairs, tmp_path, capsys):
    for pid, how in (("pair00001", "cur"), ("pair00002", "his"), ("pair00003", "his-missing")):
        _break(pairs / pid, how)
    (pairs / "pair00004").rename(pairs / "pair00004-ok")
    out = tmp_path / "out"
    assert main(["--store", store, "predict", "--model", MODEL, "--pairs", str(pairs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    _clean(captured.err)
    _match(captured.err.splitlines(), ["failed pair00001: " + UNDECODABLE.format(r"cur\.jpg"),
                                       "failed pair00002: " + UNDECODABLE.format(r"his\.jpg"), "failed pair00003: " + MISSING])
    assert f"pairs: 2 scored, 3 failed; wrote 2 map PNGs and {out / 'scores.parquet'}" in captured.out
    assert sorted(os.listdir(out)) == ["pair00000.png", "pair00004-ok.png", "scores.parquet"]
    scores = pd.read_parquet(out / "scores.parquet").set_index("pair_id")
    assert (scores.status == "error").to_dict() == {"pair00000": False, "pair00001": True, "pair00002": True,
                                                    "pair00003": True, "pair00004-ok": False}
    assert f"failed pair00001: {scores.loc['pair00001', 'error']}" == captured.err.splitlines()[0]  # the same reason


@pytest.mark.fault("cli_bad_pair")
def test_predict_exits_1_when_no_pair_could_be_scored(store, pairs, tmp_path, capsys):
    for i, how in enumerate(("cur", "his", "his-missing", "cur", "his")):
        _break(pairs / f"pair{i:05d}", how)
    assert main(["--store", store, "predict", "--model", MODEL, "--pairs", str(pairs), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    _clean(captured.err)
    assert len(captured.err.splitlines()) == 5 and "pairs: 0 scored, 5 failed" in captured.out


@pytest.mark.fault("cli_bad_pair")
def test_evaluate_skips_corrupt_pairs_names_them_and_reports_them_in_json(store, pairs, capsys):
    for pid, how in (("pair00001", "mask"), ("pair00002", "cur"), ("pair00003", "his-missing")):
        _break(pairs / pid, how)
    assert main(["--store", store, "evaluate", "--model", MODEL, "--data", str(pairs), "--json"]) == 0
    captured = capsys.readouterr()
    _clean(captured.err)
    _match(captured.err.splitlines(), ["skipped pair00001: " + UNDECODABLE.format(r"mask\.png"),
                                       "skipped pair00002: " + UNDECODABLE.format(r"cur\.jpg"), "skipped pair00003: " + MISSING])
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1  # still one JSON object on stdout
    res = json.loads(lines[0])
    assert (res["n_scored"], res["n_skipped"]) == (2, 3)
    assert [f"skipped {s['pair_id']}: {s['reason']}" for s in res["skipped"]] == captured.err.splitlines()
    assert res["f1"] is None or 0.0 <= res["f1"] <= 1.0
    assert main(["--store", store, "evaluate", "--model", MODEL, "--data", str(pairs)]) == 0
    table = capsys.readouterr().out
    assert "pairs: 2 scored" in table and "3 skipped" in table and "| precision |" in table


@pytest.mark.fault("cli_bad_pair")
def test_evaluate_exits_1_when_every_pair_is_corrupt(store, pairs, capsys):
    for i, how in enumerate(("mask", "cur", "his", "cur", "his")):
        _break(pairs / f"pair{i:05d}", how)
    assert main(["--store", store, "evaluate", "--model", MODEL, "--data", str(pairs), "--json"]) == 1
    captured = capsys.readouterr()
    _clean(captured.err)
    res = json.loads(captured.out)
    assert (res["n_scored"], res["n_skipped"], res["f1"]) == (0, 5, None)
    assert [s["pair_id"] for s in res["skipped"]] == [f"pair{i:05d}" for i in range(5)]
    assert main(["--store", store, "evaluate", "--model", MODEL, "--data", str(pairs)]) == 1
    err = capsys.readouterr().err
    assert "pairs: 0 scored, 5 skipped" in err and len(err.splitlines()) == 6


@pytest.mark.fault("cli_bad_pair")
def test_a_real_process_prints_reasons_not_tracebacks(store, pairs, tmp_path):
    _break(pairs / "pair00000", "cur")
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "--store", store, "predict", "--model", MODEL,
                          "--pairs", str(pairs), "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    _match(run.stderr.splitlines(), ["failed pair00000: " + UNDECODABLE.format(r"cur\.jpg")])
    assert "pairs: 4 scored, 1 failed" in run.stdout
    _clean(run.stderr)


def test_help_states_the_exit_status(capsys):
    for cmd in ("predict", "evaluate"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status 0 when at least one pair was scored" in text and "1 when none could be" in text


# ------------------------------------------------------------------------------------------ progress bars
_TRAIN = textwrap.dedent("""
    import sys
    import numpy as np
    from anodet_core.models import create_model
    from anodet_core.training import PairArrays, TrainConfig, train_pairs

    rng = np.random.default_rng(0)
    cur = rng.integers(0, 255, (8, 256, 256, 3), dtype=np.uint8)
    data = PairArrays([str(i) for i in range(8)], cur, cur.copy(), np.zeros((8, 256, 256), np.uint8), [])
    model = create_model("anodfdnet", preset="lite", depth=0, widths=(8, 8, 8, 8), latent_dim=16, token_dim=16,
                         num_heads=1, mlp_dim=16)
    train_pairs(model, data, None, TrainConfig(epochs=2, batch_size=2, seed=0), progress=True,
                on_epoch=lambda rec: print(f"epoch {rec['epoch']} loss {rec['loss']:.3f}", file=sys.stderr))
""")


def _train_with_stderr(stderr) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "TQDM_MININTERVAL": "0"}
    return subprocess.Popen([sys.executable, "-c", _TRAIN], stderr=stderr, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)


def test_training_draws_no_bar_into_a_file_but_keeps_the_epoch_lines(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "wb") as fh:
        assert _train_with_stderr(fh).wait(timeout=300) == 0
    text = log.read_text()
    assert "\r" not in text and "it/s" not in text
    assert [ln for ln in text.splitlines() if ln.startswith("epoch ")] == [ln for ln in text.splitlines() if ln]
    assert [ln.split()[1] for ln in text.splitlines()] == ["1", "2"]


def test_training_draws_its_bar_on_a_terminal(tmp_path):
    """The control: the same run with stderr on a pseudo-terminal does draw the bar."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns: no bar
    try:
        proc = _train_with_stderr(follower)
        os.close(follower)  # the child holds the only other end now: reading ends when it exits
        chunks = []
        while True:  # read while it runs, so a full terminal buffer never blocks it
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=300) == 0
    finally:
        os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "epoch 1/2" in text
