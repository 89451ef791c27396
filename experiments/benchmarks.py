"""The paper's five benchmark protocols (design §7) and an experiment's configuration."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One benchmark's defaults.

  Attributes:
    name: benchmark name.
    dataset: dataset loaded for it (see :mod:`experiments.data`).
    task: the task stream: ``'permuted'``, ``'random_label'``, ``'class_pair'`` or
      ``'permuted_vocab'``.
    model: ``'mlp'``, ``'cnn'`` or ``'gpt'``.
    num_tasks: tasks in the stream.
    examples_per_task: training examples in one task (sequences for text).
    epochs: passes over a task.
    batch_size: examples per step.
    num_outputs: classes (the vocabulary size for text: set from the data).
    optimizer, learning_rate: the default optimizer.
  """

  name: str
  dataset: str
  task: str
  model: str
  num_tasks: int
  examples_per_task: int
  epochs: int
  batch_size: int
  num_outputs: int = 10
  optimizer: str = 'sgd'
  learning_rate: float = 1e-2
  seq_len: int = 128


PROTOCOLS: dict[str, Protocol] = {
    'permuted_mnist': Protocol('permuted_mnist', 'mnist', 'permuted', 'mlp', 500, 10_000, 1, 16),
    'random_label_mnist': Protocol(
        'random_label_mnist', 'mnist', 'random_label', 'mlp', 50, 1_200, 400, 16
    ),
    'random_label_cifar': Protocol(
        'random_label_cifar', 'cifar10', 'random_label', 'cnn', 50, 128, 400, 16
    ),
    'continual_imagenet': Protocol(
        'continual_imagenet', 'imagenet32', 'class_pair', 'cnn', 500, 1_200, 10, 100, num_outputs=2
    ),
    # 100 epochs of 32 batches of 8 sequences of 128 tokens: 256 sequences per task.
    'permuted_shakespeare': Protocol(
        'permuted_shakespeare',
        'shakespeare',
        'permuted_vocab',
        'gpt',
        500,
        256,
        100,
        8,
        num_outputs=0,
        optimizer='adam',
        learning_rate=1e-3,
    ),
}

IMAGE_MODELS = ('cnn', 'vit')

SWEEPABLE = (
    'learning_rate',
    'eta',
    'strength',
    'shrink',
    'sigma',
    'threshold',
    'replacement_rate',
    'decay',
)


SCHEDULE_FORMS = {'tasks': 'every_n_tasks', 'steps': 'every_n_steps', 'random': 'at_random'}


def refresh_schedule(text: Any):
  """SNR's ``schedule`` from the text a config, a spec or ``--set`` holds.

  ``'tasks:K'`` is ``snr_jax.every_n_tasks(K)`` (the default is ``'tasks:16'``),
  ``'steps:N'`` is ``every_n_steps(N)`` and ``'random:P'`` is ``at_random(P)``.

  Raises:
    ValueError: for any other value, naming the three forms.
  """
  import snr_jax  # pylint: disable=import-outside-toplevel

  forms = "'tasks:K', 'steps:N' or 'random:P'"
  if not isinstance(text, str) or text.count(':') != 1:
    raise ValueError(
        f'schedule must be a string {forms} (e.g. --set schedule=tasks:4), ' f'got {text!r}.'
    )
  kind, value = (part.strip() for part in text.split(':'))
  if kind not in SCHEDULE_FORMS:
    raise ValueError(f'unknown refresh schedule {kind!r} in {text!r}: use {forms}.')
  what = 'a probability' if kind == 'random' else 'a positive int'
  try:
    number = float(value) if kind == 'random' else int(value)
  except ValueError:
    raise ValueError(f'schedule {text!r}: {kind!r} takes {what} after the colon.') from None
  return getattr(snr_jax, SCHEDULE_FORMS[kind])(number)


def method_hparams(hparams: Mapping[str, Any]) -> dict:
  """A config's hyperparameters as the method takes them (a schedule's text built)."""
  out = dict(hparams)
  if 'schedule' in out:
    out['schedule'] = refresh_schedule(out['schedule'])
  return out


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything that defines a run; with a seed, a run is a pure function of it.

  Fields left ``None`` take the benchmark protocol's value.

  Attributes:
    benchmark: a key of ``PROTOCOLS``.
    method: a key of ``snr_jax.METHODS``.
    hparams: the method's hyperparameters (see ``snr_jax.method_hyperparameters``);
      SNR's ``schedule`` as text, ``'tasks:K'``, ``'steps:N'`` or ``'random:P'``
      (:func:`refresh_schedule`).
    optimizer: ``'sgd'`` or ``'adam'``.
    learning_rate: step size.
    momentum: SGD momentum (0 for plain SGD).
    num_tasks, examples_per_task, epochs, batch_size: protocol overrides.
    dataset: dataset override (e.g. ``'fashion_mnist'`` or ``'digits'`` for the
      offline quickstart); the run records which dataset and source served it.
    model_scale: GPT width scale (1, 4, 16); ignored by other models.
    width: the MLP's hidden width (both layers; None: the protocol's 100); MLP
      benchmarks only.
    model: the network for an image benchmark whose protocol trains the CNN: ``'cnn'``
      (None: the protocol's) or ``'vit'`` (:func:`vit_for`; design §7's small ViT).
    vocab_size: for a text benchmark, keep the ``vocab_size - 1`` most frequent words and
      map the rest to one unknown token (None: the whole vocabulary).
    dead_after: examples without firing after which a unit counts as dead (1,000).
    sweep: optional ``(hyperparameter, values)`` batched with vmap in one compiled run
      (one of ``SWEEPABLE``).
  """

  benchmark: str = 'permuted_mnist'
  method: str = 'snr'
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  optimizer: Optional[str] = None
  learning_rate: Optional[float] = None
  momentum: float = 0.0
  num_tasks: Optional[int] = None
  examples_per_task: Optional[int] = None
  epochs: Optional[int] = None
  batch_size: Optional[int] = None
  dataset: Optional[str] = None
  model_scale: int = 1
  width: Optional[int] = None
  model: Optional[str] = None
  vocab_size: Optional[int] = None
  dead_after: int = 1000
  sweep: Optional[tuple[str, tuple[float, ...]]] = None

  def __post_init__(self):
    from snr_jax._src.methods import METHODS, method_hyperparameters  # pylint: disable=import-outside-toplevel

    if self.benchmark not in PROTOCOLS:
      raise ValueError(f'unknown benchmark {self.benchmark!r}: choose one of {sorted(PROTOCOLS)}.')
    if self.method not in METHODS:
      raise ValueError(f'unknown method {self.method!r}: choose one of {sorted(METHODS)}.')
    valid = set(method_hyperparameters(self.method)) - {'key'}
    unknown = sorted(set(self.hparams) - valid)
    if unknown:
      raise ValueError(
          f'unknown hyperparameter(s) {unknown} for method {self.method!r}: '
          f'valid ones are {sorted(valid)}.'
      )
    method_hparams(self.hparams)  # a bad schedule is an error before anything runs
    if self.optimizer is not None and self.optimizer not in ('sgd', 'adam'):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
    for name in (
        'num_tasks',
        'examples_per_task',
        'epochs',
        'batch_size',
        'model_scale',
        'width',
        'vocab_size',
        'dead_after',
    ):
      v = getattr(self, name)
      if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise ValueError(f'{name} must be a positive int, got {v!r}.')
    if self.width is not None and self.protocol.model != 'mlp':
      raise ValueError(
          f"width sets the MLP's hidden width; {self.benchmark!r} trains a "
          f'{self.protocol.model.upper()}.'
      )
    if self.vocab_size is not None:
      if self.protocol.task != 'permuted_vocab':
        raise ValueError(
            f"vocab_size caps a text benchmark's vocabulary; {self.benchmark!r} " 'is not one.'
        )
      if self.vocab_size < 2:
        raise ValueError(
            f'vocab_size must be at least 2 (a word and the unknown token), '
            f'got {self.vocab_size}.'
        )
    if self.model is not None:
      if self.protocol.model != 'cnn':
        raise ValueError(
            f'model chooses the network of an image benchmark that trains the '
            f'CNN; {self.benchmark!r} trains a {self.protocol.model.upper()}.'
        )
      if self.model not in IMAGE_MODELS:
        raise ValueError(f'model must be one of {IMAGE_MODELS}, got {self.model!r}.')
    if self.learning_rate is not None and not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate!r}.')
    if not 0 <= self.momentum < 1:
      raise ValueError(f'momentum must be in [0, 1), got {self.momentum!r}.')
    if self.hparams.get('check_finite'):
      raise ValueError(
          'check_finite needs the train step run under checkify, which the '
          'runner does not do; leave it unset here (it is for your own step).'
      )
    batch, examples = self.resolved('batch_size'), self.resolved('examples_per_task')
    if batch is not None and examples is not None and batch > examples:
      raise ValueError(
          f'batch_size ({batch}) must not exceed examples_per_task ({examples}); '
          "either may be the protocol's default: set the other."
      )
    if self.sweep is not None:
      name, values = self.sweep
      if name not in SWEEPABLE:
        raise ValueError(
            f'cannot sweep {name!r} with vmap: sweepable hyperparameters are ' f'{list(SWEEPABLE)}.'
        )
      if name != 'learning_rate' and name not in valid:
        raise ValueError(f'method {self.method!r} has no hyperparameter {name!r} to sweep.')
      if name in self.hparams:
        raise ValueError(f'{name!r} is both swept and fixed in hparams; give it once.')
      if not values:
        raise ValueError('a sweep needs at least one value.')
      if len(set(values)) != len(values):
        raise ValueError(
            f'the sweep of {name!r} repeats a value ({list(values)}); give each ' 'once.'
        )
      if name == 'learning_rate':
        if self.learning_rate is not None:
          raise ValueError('learning_rate is both swept and fixed; give it once.')
        if not all(v > 0 for v in values):
          raise ValueError(f'swept learning rates must be > 0, got {list(values)}.')

  @property
  def protocol(self) -> Protocol:
    return PROTOCOLS[self.benchmark]

  def resolved(self, name: str) -> Any:
    """The field's value, or the protocol's default when the field is None."""
    v = getattr(self, name)
    return getattr(self.protocol, name) if v is None else v

  @property
  def model_name(self) -> str:
    return self.model or self.protocol.model

  @property
  def dataset_name(self) -> str:
    return self.dataset or self.protocol.dataset

  @property
  def steps_per_task(self) -> int:
    return self.resolved('epochs') * (
        self.resolved('examples_per_task') // self.resolved('batch_size')
    )

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for name in ('width', 'model', 'vocab_size'):  # runs recorded before these fields
      if d[name] is None:  # existed keep their fingerprints
        del d[name]
    d['hparams'] = dict(self.hparams)
    d['resolved'] = {
        k: self.resolved(k)
        for k in (
            'optimizer',
            'learning_rate',
            'num_tasks',
            'examples_per_task',
            'epochs',
            'batch_size',
        )
    }
    d['resolved']['dataset'] = self.dataset_name
    d['resolved']['steps_per_task'] = self.steps_per_task
    return d
