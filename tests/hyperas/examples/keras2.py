"""What Keras 3 dropped that hyperas' examples use, kept small: ``ImageDataGenerator``
with the shifts and flips ``cifar_generator_cnn.py`` asks for (no featurewise statistics,
which that example turns off)."""

import keras
import numpy as np


class ImageDataGenerator:
    def __init__(self, width_shift_range=0.0, height_shift_range=0.0, horizontal_flip=False,
                 vertical_flip=False, **off):
        self.shift = (height_shift_range, width_shift_range)
        self.flips = (vertical_flip, horizontal_flip)

    def fit(self, x):
        """Featurewise statistics: every option that needs them is off in the example."""

    def flow(self, x, y, batch_size=32):
        return _Batches(self, x, y, batch_size)

    def augment(self, images, rng):
        out = images.copy()
        for i, image in enumerate(images):
            for axis, (share, flip) in enumerate(zip(self.shift, self.flips)):
                image = np.roll(image, int(rng.uniform(-share, share) * image.shape[axis]), axis=axis)
                if flip and rng.random() < 0.5:
                    image = np.flip(image, axis=axis)
            out[i] = image
        return out


class _Batches(keras.utils.PyDataset):
    def __init__(self, generator, x, y, batch_size):
        super().__init__()
        self.generator, self.x, self.y, self.batch_size = generator, x, y, batch_size
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.generator.augment(self.x[part], self.rng), self.y[part]
