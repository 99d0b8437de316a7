"""Sinusoid task sampling, the task stream, and MAML beating a pre-trained baseline."""

import math

import keras
import numpy as np
import tensorflow as tf

from tfmeta.core import maml, models
from tfmeta.data import sinusoid


def test_sample_tasks_shapes_ranges_and_determinism():
    tasks = sinusoid.sample_tasks(64, 10, 7, seed=3)
    assert tasks["support_x"].shape == (64, 10, 1) and tasks["support_y"].shape == (64, 10, 1)
    assert tasks["query_x"].shape == (64, 7, 1) and tasks["query_y"].shape == (64, 7, 1)
    amp, phase = tasks["amplitude"].numpy(), tasks["phase"].numpy()
    assert amp.min() >= 0.1 and amp.max() <= 5.0
    assert phase.min() >= 0.0 and phase.max() <= math.pi
    x = np.concatenate([tasks["support_x"], tasks["query_x"]], 1)
    assert x.min() >= -5.0 and x.max() <= 5.0
    y = np.concatenate([tasks["support_y"], tasks["query_y"]], 1)
    np.testing.assert_allclose(
        y, amp[:, None, None] * np.sin(x - phase[:, None, None]), rtol=1e-5, atol=1e-5
    )
    again = sinusoid.sample_tasks(64, 10, 7, seed=3)
    np.testing.assert_array_equal(again["query_y"], tasks["query_y"])
    other = sinusoid.sample_tasks(64, 10, 7, seed=4)
    assert not np.allclose(other["query_y"], tasks["query_y"])
    # Works in a compiled function with a tensor seed.
    compiled = tf.function(lambda s: sinusoid.sample_tasks(4, 10, 7, s), jit_compile=True)
    assert compiled(tf.constant([3, 0], tf.int64))["support_x"].shape == (4, 10, 1)


def test_task_dataset_resumes_the_same_stream():
    kw = dict(k_support=5, k_query=3, seed=11)
    full = [e["support_y"].numpy() for e in sinusoid.task_dataset(**kw).take(6)]
    resumed = [e["support_y"].numpy() for e in sinusoid.task_dataset(start_index=4, **kw).take(2)]
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)
    assert full[0].shape == (5, 1)
    other = next(iter(sinusoid.task_dataset(pipeline_id=1, **kw)))["support_y"].numpy()
    assert not np.allclose(other, full[0])
    batched = sinusoid.task_dataset(batch_size=4, **kw)
    first = next(iter(batched))
    assert first["support_x"].shape == (4, 5, 1) and first["query_x"].shape == (4, 3, 1)
    again = next(iter(sinusoid.task_dataset(batch_size=4, start_index=4, **kw)))
    np.testing.assert_array_equal(list(batched.skip(1).take(1))[0]["query_y"], again["query_y"])
    # Batching only groups consecutive tasks: a batch of 4 is tasks 0..3 of the plain stream, and
    # two replicas' batches of 2 together are the single device's batch of 4.
    np.testing.assert_array_equal(first["support_y"].numpy(), np.stack(full[:4]))
    halves = [e["support_y"].numpy() for e in sinusoid.task_dataset(batch_size=2, **kw).take(2)]
    np.testing.assert_array_equal(np.concatenate(halves), first["support_y"].numpy())


def test_maml_sinusoid_beats_pretrained_network():
    """MAML paper settings (K=10, inner lr 0.01, 1 step, meta-batch 25), short run.

    After meta-training, 10 fine-tuning steps on held-out tasks must give a
    clearly lower query MSE than before adaptation, and than a network of the
    same architecture pre-trained on the same task data for the same number
    of steps and fine-tuned the same way.
    """
    iterations, eval_steps = 1500, 10
    keras.utils.set_random_seed(0)
    model = models.sinusoid_mlp(seed=1)
    algo = maml.MAML(model, inner_lr=0.01, inner_steps=1, eval_inner_steps=eval_steps, loss="mse")
    opt = keras.optimizers.Adam(1e-3)

    @tf.function(jit_compile=True)
    def meta_step(batch):
        grads, metrics = algo.meta_gradients(batch)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return metrics

    baseline = models.sinusoid_mlp(seed=1)
    base_opt = keras.optimizers.Adam(1e-3)

    @tf.function(jit_compile=True)
    def pretrain_step(batch):
        x = tf.reshape(tf.concat([batch["support_x"], batch["query_x"]], 1), [-1, 1])
        y = tf.reshape(tf.concat([batch["support_y"], batch["query_y"]], 1), [-1, 1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(baseline(x, training=True) - y))
        base_opt.apply_gradients(
            zip(tape.gradient(loss, baseline.trainable_variables), baseline.trainable_variables)
        )
        return loss

    stream = sinusoid.task_dataset(k_support=10, k_query=10, seed=0, batch_size=25)
    for batch in stream.take(iterations):
        meta_step(batch)
        pretrain_step(batch)

    held_out = sinusoid.sample_tasks(300, 10, 10, seed=12345)
    maml_eval = tf.function(algo.evaluate, jit_compile=True)(held_out)
    base_algo = maml.MAML(
        baseline, inner_lr=0.01, inner_steps=1, eval_inner_steps=eval_steps, loss="mse"
    )
    base_eval = tf.function(base_algo.evaluate, jit_compile=True)(held_out)
    pre = float(tf.reduce_mean(maml_eval["loss_pre"]))
    post = float(tf.reduce_mean(maml_eval["loss"]))
    pretrained = float(tf.reduce_mean(base_eval["loss"]))
    print(
        f"query MSE: MAML before adaptation {pre:.3f}, MAML after {eval_steps} steps {post:.3f}, "
        f"pre-trained after {eval_steps} steps {pretrained:.3f}"
    )
    assert post < 0.5 * pre
    assert post < 0.7 * pretrained
