"""Run checkpoints (experiments.results): orbax, atomic, fingerprinted, and legacy msgpack
checkpoints of older run directories still resumed."""

import os
import signal
import time

import pytest
from flax import serialization

from experiments import data, results
from experiments.benchmarks import ExperimentConfig
from experiments.driver import _signals_deferred, drive

SEEDS = [0, 1]


@pytest.fixture(scope='module')
def digits():
  return data.load_dataset('digits', source='bundled')


@pytest.fixture(scope='module')
def config():
  return ExperimentConfig(
      'permuted_mnist',
      method='snr',
      num_tasks=6,
      examples_per_task=64,
      dataset='digits',
      hparams=dict(tau_init=32, tau_min=16, tau_max=64),
  )


@pytest.fixture(scope='module')
def uninterrupted(config, digits, tmp_path_factory):
  out = tmp_path_factory.mktemp('whole')
  drive(config, digits, SEEDS, out, tasks_per_call=2, checkpoint_every=2, progress=False)
  return (out / 'metrics.csv').read_text()


def _run(config, digits, out, **kw):
  return drive(
      config, digits, SEEDS, out, tasks_per_call=2, checkpoint_every=2, progress=False, **kw
  )


def _legacy_save(out, fp, done, carry, chunks):
  """``save_checkpoint`` as it was before orbax (Flax msgpack in one file)."""
  (out / 'checkpoint').mkdir(parents=True, exist_ok=True)
  payload = {'fingerprint': fp, 'done': done, 'carry': carry, 'chunks': chunks}
  (out / 'checkpoint' / 'state.msgpack').write_bytes(
      serialization.msgpack_serialize(serialization.to_state_dict(payload))
  )


def _refused_without_config(config, digits, out):
  """A run of other seeds is refused on the checkpoint alone, and changes nothing."""
  (out / 'config.json').unlink()
  before = sorted(out.rglob('*'))
  with pytest.raises(ValueError, match='different config or seeds'):
    drive(config, digits, [5, 6], out, tasks_per_call=2, progress=False)
  assert sorted(out.rglob('*')) == before


@pytest.mark.slow
def test_orbax_checkpoint_resumes_bitwise_and_unfinished_ones_are_ignored(
    config, digits, uninterrupted, tmp_path
):
  assert not _run(config, digits, tmp_path, stop_after=2)['complete']
  assert sorted(p.name for p in (tmp_path / 'checkpoint').iterdir()) == ['2']
  # A run killed while writing its next checkpoint leaves orbax's temporary directory.
  unfinished = tmp_path / 'checkpoint' / '4.orbax-checkpoint-tmp'
  (unfinished / 'carry').mkdir(parents=True)
  (unfinished / 'carry' / '_METADATA').write_text('{truncated')
  _refused_without_config(config, digits, tmp_path)
  summary = _run(config, digits, tmp_path)
  assert summary['resumed_from'] == 2 and summary['complete']
  assert (tmp_path / 'metrics.csv').read_text() == uninterrupted
  # only the newest checkpoint is kept; the unfinished one was cleaned up
  assert sorted(p.name for p in (tmp_path / 'checkpoint').iterdir()) == ['6']


@pytest.mark.slow
def test_legacy_msgpack_checkpoint_is_resumed_then_replaced(
    config, digits, uninterrupted, tmp_path, monkeypatch
):
  with monkeypatch.context() as m:
    m.setattr(results, 'save_checkpoint', _legacy_save)
    _run(config, digits, tmp_path, stop_after=2)
  legacy = tmp_path / 'checkpoint' / 'state.msgpack'
  assert sorted(p.name for p in (tmp_path / 'checkpoint').iterdir()) == ['state.msgpack']
  _refused_without_config(config, digits, tmp_path)
  summary = _run(config, digits, tmp_path)
  assert summary['resumed_from'] == 2
  assert (tmp_path / 'metrics.csv').read_text() == uninterrupted
  assert not legacy.exists() and (tmp_path / 'checkpoint' / '6').is_dir()


@pytest.mark.parametrize('signame', ['SIGINT', 'SIGTERM'])
def test_a_signal_during_a_checkpoint_lands_after_it(signame):
  """Ctrl-C (or SIGTERM, which the study turns into Ctrl-C) in the middle of a save is
  held back: the block finishes, then the interrupt reaches the handler it would have."""
  sig = getattr(signal, signame)
  # as in a terminal, whatever this process inherited (a background job ignores SIGINT)
  previous = {
      s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)
  }
  steps = []
  try:
    with pytest.raises(KeyboardInterrupt):
      with _signals_deferred():
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler would have run by now
        steps.append('saved')
      steps.append('after')  # never reached: the interrupt lands on leaving the block
    assert steps == ['saved']
    assert signal.getsignal(sig) is signal.default_int_handler
  finally:
    for s, handler in previous.items():
      if handler is not None:
        signal.signal(s, handler)
