"""Second-order MAML on sinusoid regression (Finn et al., 2017, section 5.1).

Tasks: y = A sin(x - phi), A in [0.1, 5], phi in [0, pi], x in [-5, 5]; K = 10 support points;
network 1 -> 40 -> 40 -> 1 (ReLU); inner SGD lr 0.01, 1 inner step (10 at evaluation); Adam meta
lr 1e-3; meta-batch 25; 70,000 iterations. Variants: ``default`` and ``smoke``::

    python -m tfmeta.train --config=configs/sinusoid_maml.py --workdir=/tmp/sine
    python -m tfmeta.evaluate --workdir=/tmp/sine --episodes=600

The evaluation reports the post-adaptation mean squared error on held-out tasks (paper figure 2:
MAML fits a new sinusoid from 10 points after one step far better than a pre-trained network).
``tfmeta.evaluate --inner_steps=1`` evaluates after one step. What was measured with this config:
docs/results.md.
"""

from tfmeta.run import config as tfmeta_config


def get_config(variant: str = "default"):
    """Returns the sinusoid config for ``variant`` ('default' or 'smoke')."""
    c = tfmeta_config.base_config()
    c.algorithm = "maml"
    c.task = "sinusoid"
    c.model.name = "mlp"
    c.data.k_support, c.data.k_query = 10, 10
    c.inner.lr, c.inner.steps, c.inner.eval_steps = 0.01, 1, 10
    c.outer.lr = 1e-3
    c.train.meta_batch_size = 25
    c.train.iterations = 70000
    c.eval.split = "test"
    if variant == "smoke":
        c.train.meta_batch_size = 10
        c.train.iterations = 200
        c.train.steps_per_loop = 20
        c.train.log_every = 100
        c.train.checkpoint_every = 100
        c.train.eval_every = 100
        c.train.eval_episodes = 50
        c.eval.episodes = 100
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; allowed: ['default', 'smoke']")
    return c
