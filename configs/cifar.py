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
  # k-fold cross-validation: with folds ≥ 2, fold `fold` of `folds` disjoint
  # folds of the training split validates, instead of validation_fraction.
  config.folds = 0
  config.fold = 0
  config.max_train_examples = 0  # 0 = all.
  config.augment = True  # Random crop after 4-pixel padding, horizontal flip.

  config.model = 'seed_cnn'  # seed_cnn | seed_cnn_narrow | vgg11 | vgg16 | resnet20 | allconv_bn
  config.batch_norm = False  # After each convolution (resnet20: always).
  config.dropout = 0.0  # Before the last Dense layer.
  # Layers: auto (cpu_tuned on the CPU, else flax) | cpu_tuned
  # (l2jax.cpu.layers: Winograd convolutions, float32 rounding up to ~6e-6 of
  # the largest value) | flax (flax's own layers, XLA's direct convolutions).
  config.layers = 'auto'

  # Optimizer: the update direction, and α_t = learning_rate · η_t.
  config.optimizer = 'sgd'  # sgd | adam
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.nesterov = False
  config.adam = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))
  config.schedule = 'cosine'  # constant | cosine | step
  config.lr_floor = 0.0  # For `cosine`: η_t falls from 1 to this.
  config.warmup_epochs = 0.0
  config.step_boundaries = (0.5, 0.75)  # Fractions of training, for `step`.
  config.step_decay = 0.1

  # L2: see l2jax.optim.l2_chain and the README for each mode's formula.
  config.l2 = ml_collections.ConfigDict()
  config.l2.mode = 'coupled'  # none | loss | coupled | decoupled | decoupled_lr
  config.l2.weight = 5e-4  # λ
  config.l2.mask = 'kernels'  # kernels | all | a regex over parameter paths
  config.l2.normalized = False  # λ = weight · √(b / (B T)) (L&H appendix B.1).
  config.l2.schedule = 'lr'  # lr (decay follows η_t) | constant (decoupled modes)

  # Beside L2 (each in the README with its formula); masks as config.l2.mask.
  config.l1 = ml_collections.ConfigDict(dict(weight=0.0, mask='kernels'))
  # L2-SP toward the weights of init_from (a workdir or checkpoint of l2jax),
  # which is also where training starts (the head is new if classes differ).
  config.l2sp = ml_collections.ConfigDict(
      dict(weight=0.0, mode='loss', mask='kernels', init_from=''))
  config.activity_l2 = ml_collections.ConfigDict(dict(weight=0.0))

  config.batch_size = 128  # Global; must divide by the device count.
  config.eval_batch_size = 1000
  config.num_epochs = 30
  config.eval_every_epochs = 1  # Validation and test; always after the last epoch.
  # Test accuracy under additive Gaussian noise, σ a fraction of 0..255.
  config.noise_sigmas = (0.02, 0.05, 0.1)
  config.seed = 0
  config.checkpoint_every_steps = 200  # And at each epoch's end; 0: only there.
  config.checkpoints_to_keep = 3
  # TensorBoard: the loss of every N-th step, beside the per-epoch numbers.
  config.log_every_steps = 50
  # Each kernel group's rotation Δθ, shrink s_t and Δθ* (l2jax.equilibrium)
  # in every N-th step of an epoch (its first, N+1-th, ...); the epoch
  # records their means over those steps. 1: every step (the separability
  # study's presets); 0: not measured. Measuring every step costs the seed
  # network's step about 10 % (docs/performance.md).
  config.rotation_every_steps = 10
  return config
