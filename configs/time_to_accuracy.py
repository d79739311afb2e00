"""The first seed's recipe, for benchmarks/time_to_accuracy.py: the seed
network on CIFAR-10, batch 128, SGD with momentum 0.9 at lr 0.01 on a
cosine schedule, coupled L2 λ = 5e-4 on every parameter, crop and flip, 10
epochs, the test split evaluated after every epoch.

    python -m benchmarks.time_to_accuracy \
        --data=folder:data/cifar10-jpeg \
        --out=benchmarks/results/time_to_accuracy_cpu/report.md

Runtime and accuracy on a 2-core CPU: the committed report.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.update(model='seed_cnn', batch_size=128, optimizer='sgd',
                learning_rate=0.01, momentum=0.9, schedule='cosine',
                num_epochs=10, augment=True, validation_fraction=0.0,
                eval_every_epochs=1, noise_sigmas=(),
                # Saves inside an epoch would count as training time.
                checkpoint_every_steps=0, checkpoints_to_keep=1)
  config.l2.update(mode='coupled', weight=5e-4, mask='all')
  return config
