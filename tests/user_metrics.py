"""A metric in a module of the user's own, imported by the script that tunes (tests/test_optim.py)."""

import keras


def agreement(y_true, y_pred):
    return keras.ops.mean(keras.ops.equal(keras.ops.argmax(y_true, -1), keras.ops.argmax(y_pred, -1)))
