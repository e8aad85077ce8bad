"""Break what a test guards and see the test fail: a small, hand-written mutation check of the pipeline's joins.

Each mutant replaces one snippet of the library in a copy of the working tree (never in place) and runs the
tests that guard it against the copy (``PYTHONPATH`` puts the copy first). A mutant must make at least one of
its tests fail ("killed"); one that passes them all ("survived") is a hole in the suite.

    .venv/bin/python tests/mutation_check.py            # every mutant (~10 min on 2 cores)
    .venv/bin/python tests/mutation_check.py -k quantize # those whose name holds "quantize"

Not part of ``make test``: it reruns tests many times. Exit status 1 unless every mutant is killed by a
failing assertion (a mutant that breaks the import is "broken", not killed), 2 when the
control (the same tests on an unchanged copy) fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


S = "tests/unit/scoring/test_scoring.py"
J = "tests/unit/night/test_pipeline_joins.py"
MUTANTS = [
    Mutant("findings_4_connected", "anodet_core/scoring/postprocess.py",
           "labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))", "labels, n = ndimage.label(above)",
           (f"{S}::test_find_regions_boxes_connectivity_min_area_and_order",)),
    Mutant("findings_min_area_strict", "anodet_core/scoring/postprocess.py",
           "if sl is None or areas[k] < min_area:", "if sl is None or areas[k] <= min_area:",
           (f"{S}::test_find_regions_boxes_connectivity_min_area_and_order",)),
    Mutant("findings_order", "anodet_core/scoring/postprocess.py",
           "out.sort(key=lambda f: -f.peak_score)", "out.sort(key=lambda f: f.peak_score)",
           (f"{S}::test_find_regions_boxes_connectivity_min_area_and_order",)),
    Mutant("capture_score_search", "anodet_core/scoring/postprocess.py",
           "    return float(levels[lo])\n", "    return float(levels[max(lo - 1, 0)])\n",
           (f"{S}::test_capture_score_ignores_specks_smaller_than_a_finding", f"{S}::test_capture_score_agrees_with_the_decision")),
    Mutant("evaluate_min_area_1", "anodet_core/evaluation/evaluate.py",
           "scored = postprocess(m, q.native_size, op, map_dtype)", "scored = postprocess(m, q.native_size, type(op)(op.threshold, 1), map_dtype)",
           (f"{S}::test_night_and_evaluate_give_the_same_maps_findings_and_decisions",)),
    Mutant("quantize_floor", "anodet_core/store/maps.py",
           "np.clip(np.rint(score * 255.0), 0, 255)", "np.clip(np.floor(score * 255.0), 0, 255)",
           (S, J, "tests/unit/store/test_maps.py")),
    Mutant("map_padding_bottom_right", "anodet_core/store/maps.py",
           "row[:h, :w] = stored", "row[-h:, -w:] = stored",
           (f"{J}::test_local_night_maps_and_reports_agree",)),
    Mutant("map_chunk_key", "anodet_core/store/maps.py",
           'folder = f"{self._base}/maps/c/{index}/0"', 'folder = f"{self._base}/maps/c/0/{index}"',
           (f"{J}::test_local_night_maps_and_reports_agree",)),
    Mutant("registration_failed_reported_ok", "anodet_core/night/rows.py",
           "Scored(STATUS_OK if reg.ok else STATUS_REGISTRATION_FAILED,", "Scored(STATUS_OK,",
           (f"{J}::test_local_night_maps_and_reports_agree",)),
    Mutant("warp_pixel_centres", "anodet_core/imaging/prepare.py",
           "p = _t(0.5, 0.5) @ np.asarray(matrix, np.float64) @ _t(-0.5, -0.5)", "p = np.asarray(matrix, np.float64)",
           ("tests/unit/imaging/test_warp_native.py",)),
    Mutant("fast_path_off_by_0.05", "anodet_core/scoring/predictor.py",
           "        return out.float()[:, 0]", "        return out.float()[:, 0] + (0.05 if self.bf16 or self.channels_last else 0.0)",
           ("tests/unit/scoring/test_fast_path.py",)),
    Mutant("best_f1_argmin", "anodet_core/evaluation/metrics/_pixel.py",
           "b = int(np.argmax(f1))", "b = int(np.argmin(f1))",
           ("tests/unit/scoring/test_thresholds.py",)),
    Mutant("settings_prefix", "anodet_core/config.py",
           "env_prefix=ENV_PREFIX,", 'env_prefix="ANODET",',
           ("tests/unit/store/test_settings_schema.py",)),
    Mutant("report_car_int64", "anodet_core/store/schemas.py",
           "    car: int = _col(pa.int32(), required=True)\n    region_id: str = _col(pa.string(), required=True)\n    captured_at",
           "    car: int = _col(pa.int64(), required=True)\n    region_id: str = _col(pa.string(), required=True)\n    captured_at",
           ("tests/unit/store/test_settings_schema.py::test_report_tables_have_the_written_down_columns_and_types",)),
    Mutant("history_ignores_decision", "anodet_core/night/history.py",
           '(pc.field("status") == STATUS_OK) & (pc.field("decision") == DECISION_NORMAL)', '(pc.field("status") == STATUS_OK)',
           ("tests/unit/night/test_layout_history.py",)),
    Mutant("readers_ignore_commits", "anodet_core/store/layout.py",
           'if (parts.get("depot"), parts.get("night")) in commits:', "if False:",
           ("tests/unit/store/test_publish.py",)),
    Mutant("publish_keeps_debris", "anodet_core/store/publish.py",
           "    clean_night(store, commit)\n    return commit", "    return commit",
           ("tests/unit/store/test_publish.py",)),
    Mutant("bench_speedup_inverted", "anodet_core/evaluation/bench.py",
           "return self.fast_pairs_s / self.fp32_pairs_s", "return self.fp32_pairs_s / self.fast_pairs_s",
           ("tests/unit/evaluation/test_bench.py::test_model_path_rates_count_only_the_timed_batches_of_each_path",)),
]


def _copy_tree(dest: Path) -> None:
    """The working tree's library and tests (not the venv, caches or data) under ``dest``."""
    for part in ("anodet_core", "flows", "tasks", "tests", "pyproject.toml"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / part)


def run(m: Mutant, timeout: int) -> tuple[str, float, str]:
    """'killed', 'survived', 'broken' (the tests did not even run: an import or collection error) or 'invalid'
    (the snippet is not in the file exactly once), the seconds taken and the first failing test.

    The control (``m.old == m.new``) runs the tests on an unchanged copy: it must "survive".
    """
    text = (ROOT / m.file).read_text()
    if m.old and text.count(m.old) != 1:
        return "invalid", 0.0, ""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        dest = Path(tmp)
        _copy_tree(dest)
        (dest / m.file).write_text(text.replace(m.old, m.new) if m.old else text)
        env = {**os.environ, "PYTHONPATH": str(dest)}
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                                 cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
            code, out = res.returncode, res.stdout
        except subprocess.TimeoutExpired:
            code, out = -1, "FAILED (timeout)"  # a hanging test is caught by the suite's timeouts: killed
        secs = time.perf_counter() - t0
        failed = next((ln.split(" - ")[0] for ln in out.splitlines() if ln.startswith("FAILED")), "")
        if code == 0:
            return "survived", secs, ""
        return ("killed" if failed else "broken"), secs, failed.removeprefix("FAILED ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per mutant")
    ap.add_argument("--no-control", action="store_true", help="skip the run of the tests on an unchanged copy")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.k in m.name]
    if not args.no_control:  # the same tests on an unchanged copy must pass, or a "kill" proves nothing
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        verdict, secs, _ = run(Mutant("control", chosen[0].file, "", "", tests), args.timeout * 2)
        print(f"control   {secs:6.1f} s  the mutants' tests on an unchanged copy: {'pass' if verdict == 'survived' else 'FAIL'}")
        if verdict != "survived":
            return 2
    results = []
    for m in chosen:
        verdict, secs, failed = run(m, args.timeout)
        results.append((m, verdict))
        print(f"{verdict:9s} {secs:6.1f} s  {m.name}  ({m.file})  {failed}", flush=True)
    killed = sum(v == "killed" for _, v in results)
    print(f"mutants: {len(results)}, killed {killed}, survived {sum(v == 'survived' for _, v in results)}, "
          f"broken {sum(v == 'broken' for _, v in results)}, invalid {sum(v == 'invalid' for _, v in results)}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
