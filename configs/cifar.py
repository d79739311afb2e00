"""The seeds' network on CIFAR-10: SGD with momentum and coupled L2, λ = 5e-4.

    python -m l2jax.main --config=configs/cifar.py --workdir=runs/cifar

Offline, point it at the CIFAR-10 copy (see the README):

    python -m l2jax.main --config=configs/cifar.py --workdir=runs/cifar \
        --config.dataset=folder:data/cifar10-jpeg

Runtime on a 2-core CPU (AMD EPYC): see the README's measured figures.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # Data: a TFDS name, or folder:PATH with PATH/{train,test}/<class>/*.jpg.
  config.dataset = 'cifar10'
  config.data_dir = ''  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets).
  config.manual_dir = ''  # Prepare the TFDS data set from these local files.
  config.validation_fraction = 0.1
  config.max_train_examples = 0  # 0 = all.
  config.augment = True  # Random crop after 4-pixel padding, horizontal flip.

  config.model = 'seed_cnn'

  # Optimizer: the update direction, and α_t = learning_rate · η_t.
  config.optimizer = 'sgd'  # sgd | adam
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.nesterov = False
  config.adam = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))
  config.schedule = 'cosine'  # constant | cosine | step
  config.warmup_epochs = 0.0
  config.step_boundaries = (0.5, 0.75)  # Fractions of training, for `step`.
  config.step_decay = 0.1

  # L2: see l2jax.optim.l2_chain and the README for each mode's formula.
  config.l2 = ml_collections.ConfigDict()
  config.l2.mode = 'coupled'  # none | loss | coupled | decoupled | decoupled_lr
  config.l2.weight = 5e-4  # λ
  config.l2.mask = 'kernels'  # kernels | all | a regex over parameter paths

  config.batch_size = 128  # Global; must divide by the device count.
  config.eval_batch_size = 1000
  config.num_epochs = 30
  config.eval_every_epochs = 1  # Validation and test; always after the last epoch.
  config.seed = 0
  config.checkpoint_every_steps = 200  # And at each epoch's end; 0: only there.
  config.checkpoints_to_keep = 3
  return config
