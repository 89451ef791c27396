"""Command line for the paper's five benchmarks, and for plotting their results.

    python -m experiments.cli permuted_mnist --method snr --seeds 5 --out runs/pm_snr
    python -m experiments.permuted_mnist --method none --num-tasks 50    # same thing
    python -m experiments.cli plot runs/pm_snr runs/pm_none --out pm.png

Each run writes its config, the dataset and source used, per-task metrics and the
headline figure into ``--out`` (see ``experiments.results``), checkpoints every
``--checkpoint-every`` tasks, and resumes from that checkpoint when started again with
the same flags and output directory. With ``--coordinator``, ``--num-processes`` and
``--process-id``, or ``--distributed`` under a cluster launcher (Slurm, Open MPI, Cloud
TPU, Kubernetes), the same command runs over several processes (``jax.distributed``).
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import sys
from typing import Optional, Sequence

from experiments.benchmarks import IMAGE_MODELS

BENCHMARKS = (
    'permuted_mnist',
    'random_label_mnist',
    'random_label_cifar',
    'continual_imagenet',
    'permuted_shakespeare',
)


class CliError(Exception):
  """A bad flag or value: printed as one message, without a traceback."""


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _parse_assignments(items: Sequence[str], flag: str) -> dict:
  out = {}
  for item in items or ():
    if '=' not in item:
      raise CliError(f'{flag} expects NAME=VALUE, got {item!r}.')
    name, value = item.split('=', 1)
    out[name.strip()] = _parse_value(value.strip())
  return out


def _parse_seeds(text: str) -> list[int]:
  try:
    if ',' in text or '-' in text.strip('-'):
      seeds = []
      for part in text.split(','):
        if '-' in part:
          a, b = part.split('-')
          seeds.extend(range(int(a), int(b) + 1))
        elif part:
          seeds.append(int(part))
      return seeds
    n = int(text)
  except ValueError:
    raise CliError(
        f'--seeds takes a count (5), a list (0,3,7) or a range (0-4); got ' f'{text!r}.'
    ) from None
  if n < 1:
    raise CliError('--seeds must be at least 1.')
  return list(range(n))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Appends ``(default: X)`` to each option's help where X is a real value."""

  def _get_help_string(self, action):
    text = action.help or ''
    if (
        action.default not in (None, False, argparse.SUPPRESS)
        and '%(default)' not in text
        and action.option_strings
    ):
      text += ' (default: %(default)s)'
    return text


# Flags that apply to some benchmarks only (the others reject them as unrecognized).
_GPT_BENCHMARKS = ('permuted_shakespeare',)
_MLP_BENCHMARKS = ('permuted_mnist', 'random_label_mnist')
_CNN_BENCHMARKS = ('random_label_cifar', 'continual_imagenet')


def _add_run_arguments(p: argparse.ArgumentParser, name: str) -> None:
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  p.add_argument('--method', default='snr', choices=sorted(METHODS), help='plasticity method')
  p.add_argument(
      '--set',
      dest='hparams',
      action='append',
      metavar='NAME=VALUE',
      help='a method hyperparameter, e.g. --set eta=0.08 --set tau_min=100 '
      '(repeatable; see snr_jax.method_hyperparameters)',
  )
  p.add_argument(
      '--sweep',
      metavar='NAME=V1,V2,...',
      help='batch one hyperparameter over values in the same compiled run, '
      'e.g. --sweep eta=0.01,0.08,0.3',
  )
  p.add_argument('--optimizer', choices=('sgd', 'adam'), help="(default: the protocol's)")
  p.add_argument('--lr', type=float, help="learning rate (default: the protocol's)")
  p.add_argument('--momentum', type=float, default=0.0, help='SGD momentum (SGD only)')
  p.add_argument('--seeds', default='1', help='a count (5), a list (0,3,7) or a range (0-4)')
  p.add_argument('--num-tasks', type=int, help="number of tasks (default: the protocol's)")
  p.add_argument('--epochs', type=int, help="passes over each task (default: the protocol's)")
  p.add_argument(
      '--examples-per-task', type=int, help="training examples per task (default: the protocol's)"
  )
  p.add_argument('--batch-size', type=int, help="examples per step (default: the protocol's)")
  if name in _GPT_BENCHMARKS:
    p.add_argument('--scale', type=int, default=1, help='GPT width scale (1, 4, 16)')
    p.add_argument(
        '--vocab-size',
        type=int,
        help='keep the K-1 most frequent words, the rest one unknown token '
        '(default: the whole vocabulary)',
    )
  if name in _MLP_BENCHMARKS:
    p.add_argument('--width', type=int, help='hidden width of both MLP layers (default 100)')
  if name in _CNN_BENCHMARKS:
    p.add_argument(
        '--model',
        choices=IMAGE_MODELS,
        help="the network: the protocol's CNN, or design §7's small ViT",
    )
  p.add_argument(
      '--dataset',
      help="dataset to use instead of the protocol's (e.g. "
      'fashion_mnist or digits for Permuted runs)',
  )
  p.add_argument('--data-dir', help='directory with raw dataset files (or set ' 'SNR_JAX_DATA_DIR)')
  p.add_argument(
      '--source',
      choices=('tfds', 'files', 'bundled'),
      help='only try this data source (default: each in turn)',
  )
  p.add_argument('--out', default=None, help=f'output directory (default: runs/{name}_<method>)')
  p.add_argument('--checkpoint-every', type=int, default=25, help='tasks between checkpoints')
  p.add_argument(
      '--tasks-per-call',
      type=int,
      default=5,
      help='tasks per compiled call; progress updates between calls',
  )
  p.add_argument(
      '--mode',
      default='auto',
      choices=('auto', 'vmap', 'mesh', 'sequential'),
      help='batch seeds with vmap, place them on a device mesh (jit over every '
      'device, of every process when there are several), or run them one '
      'by one (auto: vmap, but one by one for a single member and for CNNs '
      'on CPU; mesh across processes)',
  )
  p.add_argument(
      '--batch-devices',
      type=int,
      default=1,
      metavar='B',
      help="with --mode mesh, shard each member's batch over B devices (firing "
      'and ages stay those of the whole batch); B above the devices of one '
      'process spans whole processes',
  )
  p.add_argument(
      '--stop-after',
      type=int,
      metavar='TASKS',
      help='end the run after this many tasks (at the end of a chunk), with a '
      'checkpoint; the same command without it continues the run',
  )
  p.add_argument('--plot', action='store_true', help='also write plot.png in --out')
  p.add_argument('--no-progress', action='store_true', help='no progress bar')
  hosts = p.add_argument_group(
      'several processes (jax.distributed)',
      'Give all three, or --distributed, to run one program over every process (e.g. one\n'
      'per host), with --mode mesh placing the members on all their devices. Every process\n'
      'runs the same command with the same --out (a shared file system); only process 0\n'
      'writes results, each process writes its part of the checkpoint.',
  )
  hosts.add_argument(
      '--distributed',
      action='store_true',
      help='take what the three flags below leave unset from the cluster '
      "launcher's environment (Slurm's srun, Open MPI's mpirun, Cloud "
      'TPU, Kubernetes; JAX_COORDINATOR_ADDRESS, JAX_COORDINATOR_PORT), '
      'as jax.distributed.initialize() does',
  )
  hosts.add_argument(
      '--coordinator', metavar='HOST:PORT', help="process 0's address, reachable from every process"
  )
  hosts.add_argument('--num-processes', type=int, metavar='N', help='number of processes')
  hosts.add_argument('--process-id', type=int, metavar='I', help='this process, 0 to N-1')


def _describe(name: str) -> str:
  return (
      f'Run the {name.replace("_", " ")} benchmark. Unset options take the paper\'s '
      'protocol (design §7).'
  )


def build_parser(benchmark: Optional[str] = None) -> argparse.ArgumentParser:
  """The command line's parser.

  Args:
    benchmark: None for ``python -m experiments.cli COMMAND ...``; a benchmark name for
      ``python -m experiments.<benchmark> ...`` (that benchmark's flags, no command).
  """
  if benchmark is not None:
    parser = argparse.ArgumentParser(
        prog=f'python -m experiments.{benchmark}',
        description=_describe(benchmark),
        formatter_class=_HelpFormatter,
    )
    _add_run_arguments(parser, benchmark)
    parser.set_defaults(command=benchmark)
    return parser
  parser = argparse.ArgumentParser(
      prog='python -m experiments.cli',
      formatter_class=_HelpFormatter,
      description='Continual-learning benchmarks of Farias & Jozefiak (ICLR 2025) with '
      'SNR and the competing methods.',
  )
  sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
  for name in BENCHMARKS:
    p = sub.add_parser(
        name,
        help=f'run the {name.replace("_", " ")} benchmark',
        description=_describe(name),
        formatter_class=_HelpFormatter,
    )
    _add_run_arguments(p, name)
  p = sub.add_parser(
      'plot',
      help='plot accuracy and dead fraction per task',
      formatter_class=_HelpFormatter,
      description='Plot online accuracy and dead fraction per task for one '
      'or several result directories: one line per run (mean over '
      'seeds) with a band of ± one std.',
  )
  p.add_argument('runs', nargs='+', help='result directories')
  p.add_argument('--out', default='plot.png', help='PNG file to write')
  p.add_argument('--title', default=None)
  return parser


def _config_from_args(args):
  from experiments.benchmarks import ExperimentConfig  # pylint: disable=import-outside-toplevel

  hparams = _parse_assignments(args.hparams, '--set')
  sweep = None
  if args.sweep:
    if '=' not in args.sweep:
      raise CliError(f'--sweep expects NAME=V1,V2,..., got {args.sweep!r}.')
    name, values = args.sweep.split('=', 1)
    try:
      sweep = (name.strip(), tuple(float(v) for v in values.split(',') if v.strip()))
    except ValueError:
      raise CliError(f'--sweep values must be numbers, got {values!r}.') from None
  try:
    config = ExperimentConfig(
        benchmark=args.command,
        method=args.method,
        hparams=hparams,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        momentum=args.momentum,
        num_tasks=args.num_tasks,
        examples_per_task=args.examples_per_task,
        epochs=args.epochs,
        batch_size=args.batch_size,
        dataset=args.dataset,
        model_scale=getattr(args, 'scale', 1),
        width=getattr(args, 'width', None),
        model=getattr(args, 'model', None),
        vocab_size=getattr(args, 'vocab_size', None),
        sweep=sweep,
    )
  except (ValueError, TypeError) as e:
    raise CliError(str(e)) from None
  if args.momentum and config.resolved('optimizer') != 'sgd':
    raise CliError(
        f'--momentum applies to SGD only; this run uses '
        f'{config.resolved("optimizer")} (drop --momentum, or pass --optimizer sgd).'
    )
  return config


_DISTRIBUTED_FLAGS = ('coordinator', 'num_processes', 'process_id')

# Environment variables by which a launcher says it started several copies of this command
# (srun sets SLURM_STEP_NUM_TASKS per step; SLURM_NTASKS is also set in an sbatch script,
# where a plain run is one process).
_LAUNCHER_TASKS = (
    ('SLURM_STEP_NUM_TASKS', 'SLURM_PROCID', "Slurm's srun"),
    ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', "Open MPI's mpirun"),
)


def _flag(name: str) -> str:
  return '--' + name.replace('_', '-')


def _launched_tasks() -> Optional[tuple[int, str]]:
  """(number of tasks, launcher) when a launcher started several copies of this process."""
  for size, rank, launcher in _LAUNCHER_TASKS:
    tasks = os.environ.get(size, '')
    if rank in os.environ and tasks.isdigit() and int(tasks) > 1:
      return int(tasks), launcher
  return None


def _check_distributed(args) -> bool:
  """Whether the run spans several processes; raises CliError on incomplete or bad flags,
  and on several launched copies of a run that would each run alone."""
  given = [f for f in _DISTRIBUTED_FLAGS if getattr(args, f) is not None]
  if not given and not args.distributed:
    tasks = _launched_tasks()
    if tasks:
      raise CliError(
          f'{tasks[1]} started {tasks[0]} copies of this run, which would each run '
          'alone into the same --out; add --distributed to run them as one '
          'program over all their devices, or launch one task.'
      )
    return False
  missing = [f for f in _DISTRIBUTED_FLAGS if f not in given]
  if missing and not args.distributed:
    raise CliError(
        'a run over several processes needs --coordinator, --num-processes and '
        '--process-id together (or --distributed, to take the rest from a '
        "cluster launcher's environment); missing: " + ', '.join(_flag(f) for f in missing) + '.'
    )
  if args.coordinator is not None:
    host, _, port = args.coordinator.rpartition(':')
    if not host or not port.isdigit():
      raise CliError(
          f'--coordinator takes HOST:PORT (e.g. 10.0.0.1:1234), got ' f'{args.coordinator!r}.'
      )
  if args.num_processes is not None and args.num_processes < 1:
    raise CliError('--num-processes must be at least 1.')
  if args.process_id is not None and args.process_id < 0:
    raise CliError(f'--process-id must be at least 0, got {args.process_id}.')
  if (
      args.num_processes is not None
      and args.process_id is not None
      and args.process_id >= args.num_processes
  ):
    raise CliError(
        f'--process-id must be in 0..{args.num_processes - 1} '
        f'(--num-processes {args.num_processes}), got {args.process_id}.'
    )
  return True


def _start_distributed(args) -> None:
  """``jax.distributed.initialize`` with the flags, the rest from the launcher's
  environment under ``--distributed`` (before any other use of JAX)."""
  import jax  # pylint: disable=import-outside-toplevel
  # CPU devices talk over gloo (the default CPU client has no cross-process collectives);
  # other backends ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
  except ValueError as e:  # nothing to detect: JAX names the first value it lacks
    unset = ', '.join(_flag(f) for f in _DISTRIBUTED_FLAGS if getattr(args, f) is None)
    raise CliError(
        f'--distributed found no cluster launcher (Slurm, Open MPI, Cloud TPU, '
        f'Kubernetes) to take {unset} from ({e}); pass them as flags.'
    ) from None
  except RuntimeError as e:  # e.g. JAX already in use in this process
    raise CliError(f'jax.distributed.initialize failed: {e}') from None


def run_benchmark(args) -> dict:
  from experiments import data  # pylint: disable=import-outside-toplevel
  from experiments import results  # pylint: disable=import-outside-toplevel
  from experiments.driver import drive  # pylint: disable=import-outside-toplevel

  distributed = _check_distributed(args)
  config = _config_from_args(args)
  seeds = _parse_seeds(args.seeds)
  for flag in ('checkpoint_every', 'tasks_per_call', 'stop_after', 'batch_devices'):
    if getattr(args, flag) is not None and getattr(args, flag) < 1:
      raise CliError(f'--{flag.replace("_", "-")} must be at least 1.')
  try:
    data.canonical_name(config.dataset_name)
  except ValueError as e:  # an unknown name: one line listing the valid ones
    raise CliError(str(e)) from None
  if distributed:
    _start_distributed(args)
  try:
    dataset = data.load_dataset(config.dataset_name, data_dir=args.data_dir, source=args.source)
  except data.DatasetNotFoundError as e:
    raise CliError(str(e)) from None
  out = pathlib.Path(args.out or f'runs/{config.benchmark}_{config.method}')
  try:
    summary = drive(
        config,
        dataset,
        seeds,
        out,
        checkpoint_every=args.checkpoint_every,
        tasks_per_call=args.tasks_per_call,
        mode=args.mode,
        progress=not args.no_progress,
        stop_after=args.stop_after,
        batch_devices=args.batch_devices,
    )
  except ValueError as e:
    raise CliError(str(e)) from None
  if not results.is_writer():
    return summary
  if args.plot:
    from experiments.plots import plot_runs  # pylint: disable=import-outside-toplevel

    plot_runs([out], out / 'plot.png')
  if summary['resumed_from']:
    print(f'resumed from task {summary["resumed_from"]}')
  if not summary['complete']:
    print(
        f'stopped after {summary["tasks_done"]} of {summary["tasks_total"]} tasks; run '
        'the same command without --stop-after to continue.'
    )
  for s in summary['by_sweep_value']:
    label = f' ({config.sweep[0]}={s["sweep_value"]})' if config.sweep else ''
    print(
        f'{config.benchmark} {config.method}{label}: last-10% online accuracy '
        f'{s["mean"]:.4f} ± {s["std"]:.4f} over {len(s["seeds"])} seed(s); results in {out}'
    )
  return summary


def main(argv: Optional[Sequence[str]] = None, benchmark: Optional[str] = None) -> int:
  """Runs the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

  ``benchmark`` set: ``argv`` holds that benchmark's flags only (``python -m
  experiments.<benchmark>``). Bad flags and refused runs exit with code 2 and one message.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser(benchmark)
  commands = (*BENCHMARKS, 'plot')
  if benchmark is None and argv and not argv[0].startswith('-') and argv[0] not in commands:
    parser.exit(
        2,
        f'error: unknown benchmark or command {argv[0]!r}; valid ones: ' f'{", ".join(commands)}\n',
    )
  args = parser.parse_args(argv)
  try:
    if args.command == 'plot':
      from experiments.plots import plot_runs  # pylint: disable=import-outside-toplevel

      try:
        plot_runs([pathlib.Path(r) for r in args.runs], pathlib.Path(args.out), args.title)
      except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
      print(f'wrote {args.out}')
    else:
      run_benchmark(args)
  except CliError as e:
    parser.exit(2, f'error: {e}\n')
  except KeyboardInterrupt:
    print(
        '\ninterrupted: results and the last checkpoint are kept; run the same command '
        'again to resume.',
        file=sys.stderr,
    )
    return 130
  return 0


def benchmark_main(benchmark: str) -> None:
  """Entry point of ``python -m experiments.<benchmark>``."""
  sys.exit(main(sys.argv[1:], benchmark=benchmark))


if __name__ == '__main__':
  sys.exit(main())
