"""Tower architectures and the L2 distance between embeddings (the losses are in losses.py).

Keras/TensorFlow are imported inside functions so that importing siamese_index (and
`siamese-index --help`) stays instant. Towers are always built in code from a config:
a model directory carries weights only, never code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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


def l2_distance(a: Any, b: Any) -> Any:
    """Plain (not squared) L2 distance between rows of two tensors, safe to differentiate at 0."""
    from keras import ops

    return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=-1), 1e-12))


def _standardize(x: Any) -> Any:
    """Per-image zero mean, unit variance: removes global lighting and contrast differences."""
    from keras import ops

    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    std = ops.std(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) / ops.maximum(std, 1e-3)


def _build_ensemble(members: list[tuple[str, int]], input_shape: Sequence[int]) -> Any:
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


def build_tower(arch: str, input_shape: Sequence[int], embedding_dim: int | None = None) -> Any:
    """Build one tower (the shared-weight half of the Siamese network) with the functional API.

    Image towers take uint8-range inputs and scale them inside the graph. Layers are created in
    a fixed order with fixed names: saved weights are matched to them that way.
    """
    import keras
    from keras import layers

    if arch.startswith(ENSEMBLE_PREFIX):
        return _build_ensemble(ensemble_members(arch), input_shape)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    inp = keras.Input(shape=tuple(input_shape), name="image" if len(input_shape) == 3 else "vector")
    if arch == "dense":
        return keras.Model(inp, _dense_body(inp, len(input_shape), embedding_dim), name="tower_dense")
    if len(input_shape) != 3:
        raise ValueError(f"architecture {arch!r} needs images (h, w, c), got input shape {tuple(input_shape)}")
    x = layers.Rescaling(1.0 / 255)(inp)
    body, name = _IMAGE_BODIES[arch]
    return keras.Model(inp, body(x, embedding_dim), name=name)


def _dense_body(inp: Any, ndim: int, embedding_dim: int | None) -> Any:
    """First seed: three Dense 128 ReLU layers with light dropout."""
    from keras import layers

    x = layers.Flatten()(inp) if ndim > 1 else inp
    if ndim > 1:
        x = layers.Rescaling(1.0 / 255)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    return layers.Dense(embedding_dim or 128, activation="relu")(x)


def _seed_conv_body(x: Any, embedding_dim: int | None) -> Any:
    """The ORL tutorial's tower: conv 6 and 12 filters, max pooling, dropout, Dense 128 then 50."""
    from keras import layers

    x = layers.Conv2D(6, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Conv2D(12, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    return layers.Dense(embedding_dim or 50, activation="relu")(x)


def _seed_gap_body(x: Any, embedding_dim: int | None) -> Any:
    """The Fashion-MNIST tutorial's tower: two conv-64 blocks, global average pooling, Dense 48."""
    from keras import layers

    for _ in range(2):
        x = layers.Conv2D(64, 2, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.3)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(embedding_dim or 48)(x)


def _facenet_s_body(x: Any, embedding_dim: int | None) -> Any:
    """Our default. Lighting-normalised input, four conv-BN stages, GAP, a unit-norm embedding
    (distances in [0, 2], so the contrastive margin of 1 means the same everywhere)."""
    from keras import layers

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
    return layers.UnitNormalization(name="l2norm")(x)


# image architecture -> (the layers after the 1/255 rescaling, the Keras model name)
_IMAGE_BODIES: dict[str, tuple[Callable[[Any, int | None], Any], str]] = {
    "seed-conv": (_seed_conv_body, "tower_seed_conv"),
    "seed-gap": (_seed_gap_body, "tower_seed_gap"),
    "facenet-s": (_facenet_s_body, "tower_facenet_s"),
}


def with_augmentation(tower: Any, augmenter: Any | None) -> Any:
    """The tower behind a training-time augmenter, always in a wrapper.

    The wrapper is what gets compiled, so the tower itself never carries optimizer state and
    its saved weights file holds the weights only (a third of the size with Adam).
    """
    import keras

    steps = [augmenter, tower] if augmenter is not None else [tower]
    return keras.Sequential([keras.Input(shape=tower.input_shape[1:]), *steps], name="training_tower")


def build_siamese(tower: Any) -> Any:
    """Two inputs through one shared tower, joined by the L2 distance (the seeds' network)."""
    import keras
    from keras import layers

    shape = tower.input_shape[1:]
    a = keras.Input(shape=shape, name="a")
    b = keras.Input(shape=shape, name="b")
    ea, eb = tower(a), tower(b)
    dist = layers.Lambda(lambda t: l2_distance(t[0], t[1]), name="l2_distance")([ea, eb])
    return keras.Model([a, b], dist, name="siamese")


def build_augmenter(kind: str) -> Any | None:
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
