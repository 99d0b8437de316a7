"""Support-loss gradients computed block by block, each block recomputed when differentiated.

Second-order MAML differentiates every inner step's gradient. Even with the steps recomputed one
at a time (:mod:`tfmeta.core.remat`), differentiating one step keeps all of that step's
activations and all of its inner backward pass's alive at once; for a wide backbone (ResNet-12
on 84x84 images) that alone can exceed a machine's memory. Here the model is cut into *blocks*
that pass one tensor from each to the next, and one step's support-loss gradient is written out
as a chain:

* forward: ``h_b, s_b' = block_b(p_b, s_b, h_{b-1})`` for ``b = 1..B`` (``p_b`` the block's
  parameters, ``s_b`` its non-trainable values such as batch-norm statistics);
* backward: ``dp_b, g_{b-1} = vjp_b(p_b, s_b, h_{b-1}, g_b)`` for ``b = B..1``, with
  ``g_B = dloss/dh_B``.

Each ``block_b`` and each ``vjp_b`` is one ``tf.custom_gradient`` op whose forward keeps only its
inputs (block-boundary activations and their gradients) and whose gradient recomputes the block
(for ``vjp_b`` under two nested tapes) from those inputs. The inner gradient is thus an explicit
computation rather than a tape's, so whatever differentiates it (the meta-gradient) needs only
first derivatives of these ops: their gradient functions take exact second derivatives with
ordinary tapes inside. (``tf.recompute_grad`` cannot be used: its gradient has no gradient.)
Each recomputation takes a data dependency on the incoming gradient, as ``tf.recompute_grad``
does, so that neither the graph optimiser nor XLA can merge it with the forward computation and
keep its activations alive after all.

Blocks of a model (:func:`plan`): a functional model is cut wherever exactly one tensor is live
(a "cut"); consecutive pieces whose layers all belong to the same named block are merged: layers
named ``block<i>_...`` (:func:`tfmeta.core.models.resnet12`'s residual blocks) or
``conv<i>``/``bn<i>``/``relu<i>``/``pool<i>`` (:func:`tfmeta.core.models.conv4`'s blocks). Any
other piece is its own block, so any other functional or Sequential model is recomputed per layer
(or per smallest piece with one live tensor at each end). A model that cannot be cut (subclassed,
several inputs or outputs) is one block: the whole model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf
from keras.src.models import functional as keras_functional

from tfmeta.core import functional as F

# Names of layers that belong to a named block: resnet12's "block<i>_*", conv4's "conv<i>" etc.
_NAMED_BLOCK = (re.compile(r"(block\d+)_.*"), re.compile(r"(?:conv|bn|relu|pool)(\d+)"))

# forward(params, non_trainable, x, training=...) -> (outputs, non_trainable after the call)
Forward = Callable[..., tuple[tf.Tensor, list[tf.Tensor]]]


def block_name(layer_name: str) -> str | None:
    """The named block a layer belongs to (``"block2"`` for ``"block2_conv0"`` or ``"bn2"``), or None."""
    resnet, conv = (pattern.fullmatch(layer_name) for pattern in _NAMED_BLOCK)
    if resnet:
        return resnet.group(1)
    return f"block{conv.group(1)}" if conv else None


class Block(NamedTuple):
    """A part of a model that takes one tensor and gives one tensor.

    Attributes:
      name: for messages: the named block, or the first and last layer.
      nodes: the Keras graph nodes in execution order (functional models), or one layer
        (Sequential models), or empty for the whole model.
      input_id, output: the entering tensor's id and the leaving symbolic tensor (functional).
      params: indices into the model's trainable variables that the block's layers own.
      state: indices into the model's non-trainable variables that the block's layers own.
    """

    name: str
    nodes: tuple[Any, ...]
    input_id: int | None
    output: Any
    params: tuple[int, ...]
    state: tuple[int, ...]

    def evaluate(self, operation_fn: Callable[[Any], Callable[..., Any]], x: Any) -> Any:
        """Runs the block's layers on ``x``, each called as ``operation_fn(layer)(...)``."""
        if self.input_id is None:  # a Sequential layer
            return operation_fn(self.nodes[0])(x)
        values = {self.input_id: x}
        for node in self.nodes:
            args, kwargs = node.arguments.fill_in(values)
            out = operation_fn(node.operation)(*args, **kwargs)
            for symbolic, value in zip(node.outputs, tf.nest.flatten(out)):
                values[id(symbolic)] = value
        return values[id(self.output)]


def _owned(model: keras.Model, layers: Sequence[keras.Layer]) -> tuple[tuple[int, ...], ...]:
    trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
    non_trainable = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    params, state = set(), set()
    for layer in layers:
        params |= {trainable[id(v)] for v in layer.trainable_variables if id(v) in trainable}
        state |= {non_trainable[id(v)] for v in layer.non_trainable_variables
                  if id(v) in non_trainable}
    return tuple(sorted(params)), tuple(sorted(state))


def _functional_pieces(model: keras.Model) -> list[tuple[list[Any], int, Any]] | None:
    """``(nodes, input id, output)`` of the smallest pieces with one live tensor at each end."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    available = {id(model.inputs[0])}
    order = []
    for depth in sorted(model._nodes_by_depth, reverse=True):  # as _run_through_graph runs them
        for node in model._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if all(id(t) in available for t in node.input_tensors):
                order.append(node)
                available |= {id(t) for t in node.outputs}
    last_use = {id(model.outputs[0]): len(order)}
    for i, node in enumerate(order):
        for t in node.input_tensors:
            last_use[id(t)] = i
    symbolic = {id(model.inputs[0]): model.inputs[0]}
    live = {id(model.inputs[0])}
    pieces, start, entering = [], 0, id(model.inputs[0])
    for i, node in enumerate(order):
        symbolic.update({id(t): t for t in node.outputs})
        live = {t for t in live | {id(o) for o in node.outputs} if last_use.get(t, -1) > i}
        if len(live) == 1 and next(iter(live)) != entering:
            leaving = next(iter(live))
            pieces.append((order[start:i + 1], entering, symbolic[leaving]))
            start, entering = i + 1, leaving
    if start != len(order) or entering != id(model.outputs[0]):
        return None
    return pieces


def plan(model: keras.Model) -> list[Block]:
    """The blocks of ``model`` (see the module docstring), in order."""
    if isinstance(model, keras.Sequential):
        blocks = []
        for layer in model.layers:
            params, state = _owned(model, [layer])
            blocks.append(Block(layer.name, (layer,), None, None, params, state))
        return blocks
    pieces = (_functional_pieces(model)
              if isinstance(model, keras_functional.Functional) else None)
    if not pieces:
        return [Block(model.name, (), None, None, tuple(range(len(model.trainable_variables))),
                      tuple(range(len(model.non_trainable_variables))))]
    merged: list[tuple[str | None, list[Any], int, Any]] = []
    for nodes, entering, leaving in pieces:
        names = {block_name(n.operation.name) for n in nodes}
        key = names.pop() if len(names) == 1 else None
        if key is not None and merged and merged[-1][0] == key:
            merged[-1] = (key, merged[-1][1] + nodes, merged[-1][2], leaving)
        else:
            merged.append((key, list(nodes), entering, leaving))
    blocks = []
    for key, nodes, entering, leaving in merged:
        layers = [n.operation for n in nodes]
        params, state = _owned(model, layers)
        name = key if key is not None else (
            layers[0].name if len(layers) == 1 else f"{layers[0].name}..{layers[-1].name}")
        blocks.append(Block(name, tuple(nodes), entering, leaving, params, state))
    return blocks


def _recompute_after(upstream: Sequence[tf.Tensor], values: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``values`` plus an exact zero computed from ``upstream`` (a data dependency).

    The recomputation then cannot run before the gradient reaches it, nor be merged with the
    forward computation by the graph optimiser or XLA (both see different inputs).
    """
    first = next((u for u in upstream if u.shape.num_elements() != 0), None)
    if first is None:
        return list(values)
    elem = tf.reduce_max(tf.reshape(first, [-1])[:1])
    zero = tf.where(tf.math.is_nan(elem), tf.constant(float("nan"), elem.dtype),
                    tf.zeros([], elem.dtype))
    return [v + tf.cast(zero, v.dtype) for v in values]


def _recomputed(fn: Callable[[list[tf.Tensor]], list[tf.Tensor]],
                inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``fn(inputs)`` as one op whose gradient recomputes ``fn`` (keeping only the inputs).

    ``inputs`` and the outputs are floating tensors. ``fn`` may differentiate internally.
    """
    inputs = list(inputs)
    if not inputs:  # nothing to differentiate
        return fn([])

    @tf.custom_gradient
    def op(*args):
        # Inputs cut from every tape, so that no enclosing tape records fn's internals.
        outputs = fn([tf.stop_gradient(a) for a in args])

        def grad(*upstream, variables=None):
            upstream = [tf.zeros_like(o) if u is None else u for u, o in zip(upstream, outputs)]
            again = _recompute_after(upstream, [tf.stop_gradient(a) for a in args])
            with tf.GradientTape() as tape:
                tape.watch(again)
                recomputed = fn(again)
            grads = tape.gradient(recomputed, again, output_gradients=upstream,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            if variables is not None:
                return grads, [None] * len(variables)
            return grads

        return outputs, grad

    return list(op(*inputs))


class BlockwiseGradient:
    """The support loss and its gradient, block by block, recomputed when differentiated.

    Args:
      model: a built Keras model.
      one_task: ``one_task(block, params, non_trainable, x, training)`` runs ``block`` for one
        task (``params`` / ``non_trainable`` full-length lists with the block's entries set and
        a leading task axis of 1, ``x`` ``[1, N, ...]``) and returns ``(h, non_trainable)``.
      batched: the same for ``T`` tasks at once, or None to use ``one_task`` for every group.
      whole: the model's forward pass (for a model that is one block).
    """

    def __init__(self, model: keras.Model, *, one_task: Callable[..., Any],
                 batched: Callable[..., Any] | None, whole: Forward):
        self.model = model
        self.blocks = plan(model)
        self._one_task = one_task
        self._batched = batched
        self._whole = whole

    def _run(self, block: Block, params: Sequence[tf.Tensor], nt: Sequence[tf.Tensor],
             x: tf.Tensor, training: bool) -> tuple[tf.Tensor, list[tf.Tensor]]:
        if not block.nodes:
            return self._whole(list(params), list(nt), x, training=training)
        one = isinstance(x.shape[0], int) and x.shape[0] == 1
        run = self._one_task if one or self._batched is None else self._batched
        return run(block, list(params), list(nt), x, training)

    def __call__(self, params: Sequence[tf.Tensor], nt: Sequence[tf.Tensor], x: tf.Tensor,
                 loss_fn: Callable[[tf.Tensor], tf.Tensor], *,
                 training: bool) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        """``(loss, d loss / d params, non-trainable values after the forward pass)``.

        Args:
          params: aligned with the model's trainable variables (``[T, ...]`` each).
          nt: aligned with its non-trainable variables (``[T, ...]`` each).
          x: inputs ``[T, N, ...]``.
          loss_fn: the scalar loss of the outputs ``[T, N, ...]``.
          training: the Keras training flag.
        """
        n_params = len(params)
        h, nt, saved = self._forward(params, nt, x, training)
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = loss_fn(h)
        g = tape.gradient(loss, h, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads: list[tf.Tensor | None] = [None] * n_params
        for b in reversed(range(len(self.blocks))):
            block = self.blocks[b]
            h_in, p, s, floating_s, nt_before, fixed = saved[b]
            if fixed is not None and not p:
                continue  # nothing wanted: no parameters, and the data's gradient is not
            outs = _recomputed(
                self._backward_fn(block, params, nt_before, floating_s, len(p), training, fixed),
                [*([] if b == 0 else [h_in]), *p, *s, g])
            for i, d in zip(block.params, outs[: len(p)]):
                grads[i] = d if grads[i] is None else grads[i] + d
            if b > 0:
                g = outs[len(p)]
        grads = [tf.zeros_like(p) if d is None else d for p, d in zip(params, grads)]
        return loss, grads, nt

    def forward(self, params: Sequence[tf.Tensor], nt: Sequence[tf.Tensor], x: tf.Tensor, *,
                training: bool) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """The model's forward pass (as :meth:`tfmeta.core.inner_loop.InnerLoop.forward`), block by
        block: a tape around it keeps only block-boundary activations, and each block is
        recomputed when its gradient is taken."""
        h, nt, _ = self._forward(params, nt, x, training)
        return h, nt

    def _forward(self, params: Sequence[tf.Tensor], nt: Sequence[tf.Tensor], x: tf.Tensor,
                 training: bool) -> tuple[tf.Tensor, list[tf.Tensor], list[Any]]:
        params, nt = list(params), list(nt)
        saved = []
        h = x
        for b, block in enumerate(self.blocks):
            p = [params[i] for i in block.params]
            floating_s = [i for i in block.state if F.is_floating(nt[i])]
            s = [nt[i] for i in floating_s]
            # The first block's input is the data: a closure, so nothing differentiates it.
            fixed = h if b == 0 else None
            saved.append((h, p, s, floating_s, list(nt), fixed))
            outs = _recomputed(self._forward_fn(block, params, list(nt), floating_s, len(p),
                                                training, fixed),
                               [*([] if b == 0 else [h]), *p, *s])
            h = outs[0]
            for i, v in zip(floating_s, outs[1:]):
                nt[i] = v
        return h, nt, saved

    def _forward_fn(self, block: Block, params: list[tf.Tensor], nt: list[tf.Tensor],
                    floating_s: list[int], n_p: int, training: bool, fixed: tf.Tensor | None):
        """``[h, *p, *s] -> [h_out, *s_out]`` (``h`` omitted when ``fixed`` is given)."""
        def forward(inputs: list[tf.Tensor]) -> list[tf.Tensor]:
            if fixed is not None:
                inputs = [fixed, *inputs]
            h, p, s = inputs[0], inputs[1:1 + n_p], inputs[1 + n_p:]
            full_p, full_s = list(params), list(nt)
            for i, v in zip(block.params, p):
                full_p[i] = v
            for i, v in zip(floating_s, s):
                full_s[i] = v
            out, new_s = self._run(block, full_p, full_s, h, training)
            return [out, *(new_s[i] for i in floating_s)]

        return forward

    def _backward_fn(self, block: Block, params: list[tf.Tensor], nt: list[tf.Tensor],
                     floating_s: list[int], n_p: int, training: bool, fixed: tf.Tensor | None):
        """``[h, *p, *s, g] -> [*dp, dh]``: the block's vector-Jacobian product with ``g``.

        Without ``h`` and ``dh`` when ``fixed`` is given.
        """
        forward = self._forward_fn(block, params, nt, floating_s, n_p, training, None)

        def backward(inputs: list[tf.Tensor]) -> list[tf.Tensor]:
            if fixed is not None:
                inputs = [fixed, *inputs]
            h, p, s, g = inputs[0], inputs[1:1 + n_p], inputs[1 + n_p:-1], inputs[-1]
            wrt = list(p) if fixed is not None else [*p, h]
            with tf.GradientTape() as tape:
                tape.watch(wrt)
                out = forward([h, *p, *s])[0]
            return tape.gradient(out, wrt, output_gradients=g,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return backward
