"""A study: a grid of runs declared in a small file, with the paper's selection protocol.

    python -m experiments.study SPEC.json            # or SPEC.toml
    python -m experiments.study SPEC.json --workers 1 --dry-run
    python -m experiments.study SPEC.json --report    # CSV, table, figures; runs nothing
    python -m experiments.study --table results/study.csv --out results/study.md

A spec declares benchmarks (each with a dataset, task count, optimizers and their learning
rates) and methods (each with a grid of hyperparameter values). Every benchmark ×
optimizer × method is one *group*. Its cells follow Kumar et al.'s protocol:

1. *selection*: every hyperparameter setting of the grid runs with ``selection_seeds``
   (default 0, 1); the setting with the highest total average online accuracy (the mean
   over those seeds and over all tasks) is chosen (ties: the first listed);
2. *final*: the chosen setting runs with ``final_seeds`` (default 10..14, disjoint from
   the selection seeds, so the reported figure is not the one the choice was made on);
   the table reports its last-10% online accuracy, mean ± std over these seeds.

A method with a single setting skips the selection. A spec with ``"final": false`` is a
sweep: every setting of every method runs on the selection seeds and nothing more (the
robustness section below reads those runs). Each cell is one run of
``experiments.driver.drive`` (the compiled runner; its seeds batched as usual) in its
own directory under ``runs_dir`` with the usual config.json, metrics.csv, summary.json
and checkpoint. A cell whose summary says complete is skipped, and so is one whose seeds
the study CSV already records complete (a fresh clone resumes from the committed CSV,
with no runs directory); a cell that was killed resumes from its checkpoint. Ctrl-C (or
SIGTERM to the study's processes) stops the
study: running cells checkpoint, cells not yet started stay so (exit code 130). Cells
run in ``workers`` processes (default 2, each pinned to its own core, counting from the
first in every study: two studies at once share cores, so run one at a time or re-pin
with ``taskset -a -pc CORE PID``). After each cell the main process rewrites the study
CSV (one row per cell and seed), ``<csv stem>_selection.json`` and ``<csv stem>_curves.json`` (each
final cell's accuracy and dead fraction per task, so the figures can be drawn again on a
machine without the runs), and the markdown table. The table
ends with each method's *spread*: best − worst last-10% accuracy over its grid, on the
selection seeds (the paper's robustness claim). With ``"figures": DIR`` the study also
draws, when it ends, accuracy and dead fraction per task of the final cells and the
spread (``--report`` redraws both and the table from the cells on disk, running nothing).

A method's key is its label in the results; ``"method"`` inside its grid names the
``snr_jax`` method when the label is not one (e.g. ``"snr_per_token": {"method": "snr",
"estimator": "per_token", "eta": [0.01, 0.05]}``).

Spec (JSON; TOML with the same keys)::

    {
      "name": "permuted",
      "runs_dir": "/work/study_runs/permuted",   # run directories (keep it out of git)
      "csv": "results/study_permuted.csv",
      "table": "results/study_permuted.md",
      "selection_seeds": [0, 1], "final_seeds": [10, 11, 12, 13, 14],
      "workers": 2, "checkpoint_every": 25, "tasks_per_call": 5,
      "benchmarks": [
        {"benchmark": "permuted_mnist", "dataset": "fashion_mnist", "num_tasks": 500,
         "optimizers": {"sgd": {"learning_rate": 0.01}, "adam": {"learning_rate": 0.001}},
         "config": {}, "methods": ["none", "l2", "snr"]},  # config: other ExperimentConfig
        {"benchmark": "permuted_mnist", "label": "permuted_mnist_w400", "width": 400,
         "dataset": "fashion_mnist"}                        # fields; methods: optional filter;
      ],                                                    # label: its name in the results
      "methods": {
        "none": {},
        "l2": {"strength": [1e-5, 1e-4, 1e-3]},             # lists: a cartesian grid
        "snr": {"eta": [0.01, 0.08, 0.3], "tau_max": 20000}, # scalars: fixed
        "shrink_perturb": {"grid": [{"shrink": 0.9999, "sigma": 1e-4},
                                    {"shrink": 0.999, "sigma": 1e-3}]},  # explicit settings
                                                    # (scalars beside "grid": fixed in each)
        "snr_pt": {"method": "snr", "estimator": "per_token", "eta": [0.01, 0.05]}  # a label
      },
      "final": true,                                        # false: selection seeds only
      "figures": "results/figures"                          # optional PNGs
    }

Relative paths are taken from the current directory.
"""

from experiments.study.cells import cell_state, run_cell
from experiments.study.cli import main
from experiments.study.figures import draw_figures
from experiments.study.loop import run_study
from experiments.study.rows import CSV_FIELDS, cell_rows, read_csv, recorded_rows, write_csv
from experiments.study.selection import select_setting, setting_scores
from experiments.study.spec import (
    DEFAULT_FINAL_SEEDS,
    DEFAULT_SELECTION_SEEDS,
    Cell,
    StudyError,
    build_groups,
    final_cell,
    hparams_slug,
    load_spec,
    method_of,
    method_settings,
)
from experiments.study.tables import make_table, selection_table, spread_table

__all__ = [
    'CSV_FIELDS',
    'Cell',
    'DEFAULT_FINAL_SEEDS',
    'DEFAULT_SELECTION_SEEDS',
    'StudyError',
    'build_groups',
    'cell_rows',
    'cell_state',
    'draw_figures',
    'final_cell',
    'hparams_slug',
    'load_spec',
    'main',
    'make_table',
    'method_of',
    'method_settings',
    'read_csv',
    'recorded_rows',
    'run_cell',
    'run_study',
    'select_setting',
    'selection_table',
    'setting_scores',
    'spread_table',
    'write_csv',
]
