"""The quick recipe: a small conv net on scikit-learn's bundled 8×8 digits (offline).

    tuning run recipes/digits_cnn.py --max-evals 10

Markers: <<quniform(low, high, q)>> with an integer q gives ints, <<uniform>> floats,
<<loguniform(a, b)>> values between e**a and e**b, <<choice([...])>> one of the listed
values. Each becomes an MLflow param and tag named after the identifier before it
(filters, kernel_size, Dropout, Dense, learning_rate, batch_size).
"""

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

EXPERIMENT = "digits_cnn"
MAX_EVALS = 10
ALGO = "tpe"
OBJECTIVE = "accuracy"  # measured on (x_test, y_test) after training


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = keras.utils.to_categorical(digits.target, 10)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    return x_train, y_train, x_test, y_test


def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(filters=<<quniform(8, 32, 8)>>, kernel_size=<<choice([2, 3])>>,
                            activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(<<uniform(0.0, 0.5)>>),
        keras.layers.Dense(<<quniform(16, 128, 16)>>, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=<<loguniform(-7, -3)>>),
                loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=5, batch_size=<<choice([16, 32, 64])>>,
            validation_data=(x_test, y_test))
    return net
