"""Losses for training towers: contrastive (pairs and in-batch), CosFace with its proxy head,
distillation.

Keras is imported inside each function so that importing siamese_index stays instant.
Label 1 = same identity (genuine), 0 = different; distances are plain (not squared) L2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# A Keras loss: (y_true, y_pred) -> a scalar tensor.
Loss = Callable[[Any, Any], Any]


def contrastive_loss_np(distance: np.ndarray, label: np.ndarray, margin: float = 1.0) -> float:
    """Reference contrastive loss: mean(y d^2 + (1 - y) max(margin - d, 0)^2), label 1 = same."""
    d = np.asarray(distance, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    return float(np.mean(y * d**2 + (1 - y) * np.maximum(margin - d, 0.0) ** 2))


def contrastive_loss(margin: float = 1.0) -> Loss:
    """Keras loss on predicted pair distances: y_true 1 = same identity, 0 = different."""
    from keras import ops

    def loss(y_true, distance):
        y = ops.cast(ops.reshape(y_true, (-1,)), distance.dtype)
        d = ops.reshape(distance, (-1,))
        return ops.mean(y * ops.square(d) + (1.0 - y) * ops.square(ops.relu(margin - d)))

    loss.__name__ = "contrastive_loss"
    return loss


def batch_contrastive_loss(margin: float = 1.0) -> Loss:
    """Contrastive loss over every pair inside a batch of labelled embeddings.

    Genuine and impostor pairs are averaged separately and summed, so the loss is balanced
    whatever the batch's mix. Impostor pairs already beyond the margin contribute zero and are
    left out of their mean: the loss concentrates on the hard impostors (online mining).
    """
    from keras import ops

    def loss(labels, emb):
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        sq = ops.sum(ops.square(emb), axis=1)
        d2 = ops.expand_dims(sq, 1) + ops.expand_dims(sq, 0) - 2.0 * ops.matmul(emb, ops.transpose(emb))
        d = ops.sqrt(ops.maximum(d2, 1e-12))
        n = ops.shape(emb)[0]
        same = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)), emb.dtype)
        not_self = 1.0 - ops.eye(n, dtype=emb.dtype)
        genuine = same * not_self
        impostor = 1.0 - same
        gen_loss = ops.sum(genuine * ops.square(d)) / ops.maximum(ops.sum(genuine), 1.0)
        imp_terms = impostor * ops.square(ops.relu(margin - d))
        active = ops.cast(imp_terms > 0, emb.dtype)
        imp_loss = ops.sum(imp_terms) / ops.maximum(ops.sum(active), 1.0)
        return gen_loss + imp_loss

    loss.__name__ = "batch_contrastive_loss"
    return loss


def cosface_loss(scale: float = 20.0, margin: float = 0.2) -> Loss:
    """Large-margin cosine softmax (CosFace) on a proxy head's cosines; labels are class indices.

    An auxiliary to the contrastive loss: each step pulls an embedding towards its identity's
    learned proxy and away from every other training identity's, not only the few impostors
    inside the batch, so the tower learns far more per image on a small data set.
    """
    from keras import ops

    def loss(labels, cosines):
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        onehot = ops.one_hot(labels, ops.shape(cosines)[-1], dtype=cosines.dtype)
        logits = scale * (cosines - margin * onehot)
        return ops.mean(ops.categorical_crossentropy(onehot, logits, from_logits=True))

    loss.__name__ = "cosface_loss"
    return loss


def build_proxy_head(classes: int, name: str = "proxies") -> Any:
    """CosFace's other half, training only: a bias-free layer giving the cosine between a unit embedding and each class's proxy."""
    import keras
    from keras import ops

    class CosineProxies(keras.layers.Layer):
        def build(self, input_shape):
            self.proxies = self.add_weight(shape=(int(input_shape[-1]), classes), initializer="glorot_normal", name="w")

        def call(self, emb):
            w = self.proxies / ops.maximum(ops.sqrt(ops.sum(ops.square(self.proxies), axis=0, keepdims=True)), 1e-12)
            e = emb / ops.maximum(ops.sqrt(ops.sum(ops.square(emb), axis=-1, keepdims=True)), 1e-12)
            return ops.matmul(e, w)

    return CosineProxies(name=name)


def distillation_loss() -> Loss:
    """Mean squared L2 between embeddings and teacher vectors, over the rows that have one.

    y_true is (n, d + 1): the unit-length teacher vector, then 1 where the row has one, 0
    where it has none (those rows add nothing).
    """
    from keras import ops

    def loss(y_true, emb):
        target, has = y_true[:, :-1], y_true[:, -1]
        per_row = ops.sum(ops.square(emb - ops.cast(target, emb.dtype)), axis=1)
        has = ops.cast(has, emb.dtype)
        return ops.sum(has * per_row) / ops.maximum(ops.sum(has), 1.0)

    loss.__name__ = "distillation_loss"
    return loss
