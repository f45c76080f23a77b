"""The package, its metrics, baselines and CLI parser stay free of torch (CI runs them without it) and of scipy (numpy does the statistics)."""

from __future__ import annotations

import subprocess
import sys


def test_metrics_and_baselines_do_not_import_torch() -> None:
    code = (
        "import sys, polars as pl\n"
        "import genrec_evaluator as ge, genrec_evaluator._cli as cli\n"
        "cli._parser()\n"
        "ge.acc_at_k([[1, 2]], [2], 1); ge.auc([0, 1], [0.1, 0.9])\n"
        "train = pl.DataFrame({'user_id': ['a', 'a'], 'trajectory_id': ['t', 't'], 'poi_idx': [0, 1]})\n"
        "recs = pl.DataFrame({'record_id': ['r'], 'user_id': ['a'], 'target_poi_idx': [1],\n"
        "                     'history_poi_idx': [[0]], 'num_pois': [2]})\n"
        "assert ge.run_baselines(recs, train).metrics['markov']['acc@1'] == 1.0\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers', 'scipy') if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
