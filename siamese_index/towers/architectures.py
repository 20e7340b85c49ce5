"""Tower architectures, the L2 distance and the contrastive loss.

Keras/TensorFlow are imported inside functions so that importing siamese_index (and
`siamese-index --help`) stays instant. Towers are always built in code from a config:
a model directory carries weights only, never code.
"""

from __future__ import annotations

import numpy as np

ARCHITECTURES = ("dense", "seed-conv", "seed-gap", "facenet-s")
DEFAULT_ARCH = "facenet-s"
# An ensemble's arch names its members and their sizes: "ensemble:facenet-s/128+facenet-s/128".
ENSEMBLE_PREFIX = "ensemble:"


def ensemble_arch(members: list[tuple[str, int]]) -> str:
    return ENSEMBLE_PREFIX + "+".join(f"{arch}/{int(dim)}" for arch, dim in members)


def ensemble_members(arch: str) -> list[tuple[str, int]]:
    """[(arch, embedding_dim)] of an ensemble arch string; ValueError when it is malformed."""
    try:
        members = [(a, int(d)) for a, d in (m.rsplit("/", 1) for m in arch[len(ENSEMBLE_PREFIX) :].split("+"))]
    except ValueError:
        raise ValueError(f"malformed ensemble architecture {arch!r}") from None
    if len(members) < 2 or any(a not in ARCHITECTURES for a, _ in members):
        raise ValueError(f"malformed ensemble architecture {arch!r}")
    return members


def contrastive_loss_np(distance: np.ndarray, label: np.ndarray, margin: float = 1.0) -> float:
    """Reference contrastive loss: mean(y d^2 + (1 - y) max(margin - d, 0)^2), label 1 = same."""
    d = np.asarray(distance, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    return float(np.mean(y * d**2 + (1 - y) * np.maximum(margin - d, 0.0) ** 2))


def l2_distance(a, b):
    """Plain (not squared) L2 distance between rows of two tensors, safe to differentiate at 0."""
    from keras import ops

    return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=-1), 1e-12))


def contrastive_loss(margin: float = 1.0):
    """Keras loss on predicted pair distances: y_true 1 = same identity, 0 = different."""
    from keras import ops

    def loss(y_true, distance):
        y = ops.cast(ops.reshape(y_true, (-1,)), distance.dtype)
        d = ops.reshape(distance, (-1,))
        return ops.mean(y * ops.square(d) + (1.0 - y) * ops.square(ops.relu(margin - d)))

    loss.__name__ = "contrastive_loss"
    return loss


def batch_contrastive_loss(margin: float = 1.0):
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


def cosface_loss(scale: float = 20.0, margin: float = 0.2):
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


def distillation_loss():
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


def build_proxy_head(classes: int, name: str = "proxies"):
    """A bias-free layer giving the cosine between a unit embedding and each class's proxy."""
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


def _standardize(x):
    """Per-image zero mean, unit variance: removes global lighting and contrast differences."""
    from keras import ops

    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    std = ops.std(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) / ops.maximum(std, 1e-3)


def _build_ensemble(members: list[tuple[str, int]], input_shape):
    """Member towers side by side on one input; their embeddings concatenated and scaled by
    1/sqrt(n), so members of unit length give a unit-length vector whose squared distance is
    the mean of the members' squared distances."""
    import keras
    from keras import layers

    inp = keras.Input(shape=tuple(input_shape), name="image")
    outs = []
    for i, (arch, dim) in enumerate(members):
        tower = build_tower(arch, input_shape, dim)
        outs.append(keras.Model(tower.input, tower.output, name=f"member{i}")(inp))
    out = layers.Rescaling(1.0 / len(members) ** 0.5)(layers.Concatenate()(outs))
    return keras.Model(inp, out, name="tower_ensemble")


def build_tower(arch: str, input_shape, embedding_dim: int | None = None):
    """Build one tower (the shared-weight half of the Siamese network) with the functional API.

    Image towers take uint8-range inputs and scale them inside the graph.
    """
    import keras
    from keras import layers

    if arch.startswith(ENSEMBLE_PREFIX):
        return _build_ensemble(ensemble_members(arch), input_shape)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    inp = keras.Input(shape=tuple(input_shape), name="image" if len(input_shape) == 3 else "vector")
    if arch == "dense":
        # First seed: three Dense 128 ReLU layers with light dropout.
        x = layers.Flatten()(inp) if len(input_shape) > 1 else inp
        if len(input_shape) > 1:
            x = layers.Rescaling(1.0 / 255)(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.1)(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.1)(x)
        out = layers.Dense(embedding_dim or 128, activation="relu")(x)
        return keras.Model(inp, out, name="tower_dense")
    if len(input_shape) != 3:
        raise ValueError(f"architecture {arch!r} needs images (h, w, c), got input shape {tuple(input_shape)}")
    x = layers.Rescaling(1.0 / 255)(inp)
    if arch == "seed-conv":
        # The ORL tutorial's tower: conv 6 and 12 filters, max pooling, dropout, Dense 128 then 50.
        x = layers.Conv2D(6, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
        x = layers.Conv2D(12, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.1)(x)
        out = layers.Dense(embedding_dim or 50, activation="relu")(x)
        return keras.Model(inp, out, name="tower_seed_conv")
    if arch == "seed-gap":
        # The Fashion-MNIST tutorial's tower: two conv-64 blocks, global average pooling, Dense 48.
        for _ in range(2):
            x = layers.Conv2D(64, 2, padding="same", activation="relu")(x)
            x = layers.MaxPooling2D()(x)
            x = layers.Dropout(0.3)(x)
        x = layers.GlobalAveragePooling2D()(x)
        out = layers.Dense(embedding_dim or 48)(x)
        return keras.Model(inp, out, name="tower_seed_gap")
    # facenet-s: our default. Lighting-normalised input, four conv-BN stages, GAP, a unit-norm
    # embedding (distances in [0, 2], so the contrastive margin of 1 means the same everywhere).
    x = layers.Lambda(_standardize, name="standardize")(x)
    # One cheap conv at full resolution, then three double-conv stages: most of the compute
    # goes where the features are, which buys more epochs per CPU-hour.
    for i, width in enumerate((32, 64, 128, 256)):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}a")(x)
        x = layers.BatchNormalization(name=f"bn{i}a")(x)
        x = layers.ReLU()(x)
        if i > 0:
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
            x = layers.BatchNormalization(name=f"bn{i}b")(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(embedding_dim or 128, name="embedding")(x)
    out = layers.UnitNormalization(name="l2norm")(x)
    return keras.Model(inp, out, name="tower_facenet_s")


def with_augmentation(tower, augmenter):
    """The tower behind a training-time augmenter, always in a wrapper.

    The wrapper is what gets compiled, so the tower itself never carries optimizer state and
    its saved weights file holds the weights only (a third of the size with Adam).
    """
    import keras

    steps = [augmenter, tower] if augmenter is not None else [tower]
    return keras.Sequential([keras.Input(shape=tower.input_shape[1:]), *steps], name="training_tower")


def build_siamese(tower):
    """Two inputs through one shared tower, joined by the L2 distance (the seeds' network)."""
    import keras
    from keras import layers

    shape = tower.input_shape[1:]
    a = keras.Input(shape=shape, name="a")
    b = keras.Input(shape=shape, name="b")
    ea, eb = tower(a), tower(b)
    dist = layers.Lambda(lambda t: l2_distance(t[0], t[1]), name="l2_distance")([ea, eb])
    return keras.Model([a, b], dist, name="siamese")


def build_augmenter(kind: str):
    """Random training-time augmentation for images, chosen by the model config."""
    import keras
    from keras import layers

    if kind == "none":
        return None
    if kind == "faces":
        return keras.Sequential(
            [
                layers.RandomFlip("horizontal"),
                layers.RandomRotation(0.03, fill_mode="reflect"),
                layers.RandomTranslation(0.06, 0.06, fill_mode="reflect"),
                layers.RandomZoom((-0.08, 0.08), fill_mode="reflect"),
                layers.RandomBrightness(0.25, value_range=(0, 255)),
                layers.RandomContrast(0.35),
            ],
            name="augment_faces",
        )
    if kind == "symbols":
        return keras.Sequential(
            [
                layers.RandomRotation(0.04, fill_mode="constant", fill_value=255.0),
                layers.RandomTranslation(0.08, 0.08, fill_mode="constant", fill_value=255.0),
                layers.RandomZoom((-0.1, 0.1), fill_mode="constant", fill_value=255.0),
            ],
            name="augment_symbols",
        )
    raise ValueError(f"unknown augmentation {kind!r}; choose faces, symbols or none")
