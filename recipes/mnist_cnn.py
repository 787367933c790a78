"""The conv net of the hyperas + MLflow MNIST tutorial, with its bugs fixed.

    tuning run recipes/mnist_cnn.py --max-evals 20                       # online: downloads MNIST
    tuning run recipes/mnist_cnn.py --data mnist.npz --max-evals 20      # offline
    TUNING_MNIST_NPZ=mnist.npz tuning run recipes/mnist_cnn.py           # offline, too

The .npz holds x_train, y_train, x_test, y_test as keras.datasets.mnist.load_data() gives
them. Fixed from the tutorial: its int() casts turned two dropout rates into 0 (here they
are floats), and filters, kernel sizes, dense width and batch size come out of <<quniform>>
as ints already (an integer step gives ints), so no casts are needed at all.
"""

import os

import keras
import numpy as np

EXPERIMENT = "mnist_cnn"
MAX_EVALS = 20
OBJECTIVE = "accuracy"
EPOCHS = 2


def data(path=None):
    path = path or os.environ.get("TUNING_MNIST_NPZ")
    if path:
        with np.load(path) as arrays:
            x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    else:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
    x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
    return x_train, keras.utils.to_categorical(y_train, 10), x_test, keras.utils.to_categorical(y_test, 10)


def model(x_train, y_train, x_test, y_test):
    f1 = <<quniform(24, 64, 4)>>
    k1 = <<quniform(3, 5, 1)>>
    d1 = <<uniform(0, 0.5)>>
    f2 = <<quniform(48, 128, 4)>>
    k2 = <<quniform(3, 5, 1)>>
    d2 = <<uniform(0, 0.5)>>
    dense = <<quniform(64, 256, 16)>>
    d3 = <<uniform(0, 0.5)>>
    net = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(f1, kernel_size=k1, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(d1),
        keras.layers.Conv2D(f2, kernel_size=k2, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(d2),
        keras.layers.Flatten(),
        keras.layers.Dense(dense, activation="relu"),
        keras.layers.Dropout(d3),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=<<quniform(32, 128, 32)>>,
            validation_data=(x_test, y_test))
    return net
