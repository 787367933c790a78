"""The Talos README example (iris, a one-hidden-layer MLP), as a recipe.

    tuning run recipes/iris_mlp.py --max-evals 20

Talos' parameter dictionary becomes markers where the values are used: first_neuron,
activation, dropout, optimizer, losses and batch_size. Like a Talos model it returns
(history, model); the objective is accuracy on the held-out quarter.
"""

import keras
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

EXPERIMENT = "iris_mlp"
MAX_EVALS = 20


def data():
    iris = load_iris()
    y = keras.utils.to_categorical(iris.target, 3)
    x_train, x_val, y_train, y_val = train_test_split(
        iris.data.astype("float32"), y, test_size=0.25, random_state=0, stratify=iris.target)
    return x_train, y_train, x_val, y_val


def model(x_train, y_train, x_val, y_val):
    net = keras.Sequential([
        keras.Input(shape=(4,)),
        keras.layers.Dense(units=<<choice([4, 8, 16, 32, 64], name="first_neuron")>>,
                           activation=<<choice(["relu", "elu"])>>),
        keras.layers.Dropout(rate=<<quniform(0.0, 0.5, 0.1, name="dropout")>>),
        keras.layers.Dense(3, activation="softmax"),
    ])
    net.compile(optimizer=<<choice(["adam", "nadam", "rmsprop"])>>,
                loss=<<choice(["categorical_crossentropy", "log_cosh"], name="losses")>>,
                metrics=["accuracy"])
    history = net.fit(x_train, y_train, epochs=50, batch_size=<<choice([4, 8, 16, 32])>>,
                      validation_data=(x_val, y_val))
    return history, net
