"""Offline stand-ins for ``keras.datasets``: the shapes and dtypes of MNIST, CIFAR-10 and
IMDB, made from scikit-learn's bundled 8x8 digits (or a seeded generator), and small.

The ports of hyperas' examples import these instead of ``keras.datasets`` (this machine
cannot download), each such line marked ``# port:``.
"""

import numpy as np
from sklearn.datasets import load_digits

TRAIN, TEST = 240, 80


def _digits(size):
    """Digit images upscaled to ``size`` x ``size`` uint8, as the datasets hold them."""
    digits = load_digits()
    images = np.kron(digits.images, np.ones((1, 3, 3)))[:, :size, :size]  # 8x8 -> 24x24
    pad = size - images.shape[1]
    images = np.pad(images, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)))
    images = (images * 255 / 16).astype("uint8")
    x, y = images[:TRAIN + TEST], digits.target[:TRAIN + TEST].astype("uint8")
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN:], y[TRAIN:])


class mnist:  # noqa: N801 - used as the module keras.datasets.mnist
    @staticmethod
    def load_data():
        return _digits(28)  # (n, 28, 28) uint8, labels 0-9


class cifar10:  # noqa: N801
    @staticmethod
    def load_data():
        (x_train, y_train), (x_test, y_test) = _digits(32)
        rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
        return (rgb(x_train), y_train[:, None]), (rgb(x_test), y_test[:, None])  # (n, 32, 32, 3), (n, 1)


class imdb:  # noqa: N801
    @staticmethod
    def load_data(num_words=20000):
        """Lists of word indices of varying length, labels 0/1 (here: whether word 7 is common)."""
        rng = np.random.default_rng(0)

        def reviews(count):
            texts = [list(rng.integers(1, min(num_words, 200), rng.integers(20, 120))) for _ in range(count)]
            labels = np.array([int(t.count(7) > 0) for t in texts])
            return np.array(texts, dtype=object), labels

        return reviews(TRAIN), reviews(TEST)
