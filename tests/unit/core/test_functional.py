"""Pure functions on parameter lists."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmeta.core import functional as F
from tests import param_math as P


def test_functional_helpers():
    a = [tf.constant([3.0, 4.0]), tf.constant([0.0])]
    np.testing.assert_allclose(P.global_norm(a), 5.0)
    clipped = P.clip_by_global_norm(a, 1.0)
    np.testing.assert_allclose(P.global_norm(clipped), 1.0, rtol=1e-6)
    assert P.clip_by_global_norm(a, 10.0)[0].numpy().tolist() == [3.0, 4.0]
    np.testing.assert_allclose(P.sgd_step(a, a, 0.5)[0], [1.5, 2.0])
    np.testing.assert_allclose(P.sub(P.add(a, a), a)[0], a[0])
    # Clipping stays twice differentiable at a zero gradient (no NaN).
    z = [tf.zeros(3)]
    with tf.GradientTape() as t2:
        t2.watch(z)
        with tf.GradientTape() as t1:
            t1.watch(z)
            n = P.global_norm(P.clip_by_global_norm(z, 1.0))
        g = t1.gradient(n, z)[0]
        s = tf.reduce_sum(g)
    assert np.all(np.isfinite(t2.gradient(s, z)[0]))
    v = [tf.Variable([1.0]), tf.Variable([1], dtype=tf.int32)]
    F.assign_floating(v, [tf.constant([2.0]), tf.constant([5])])
    assert v[0].numpy()[0] == 2.0 and v[1].numpy()[0] == 1
