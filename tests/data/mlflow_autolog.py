"""MLflow's Keras autologging (the example in ``mlflow.keras.autolog``'s docs) in a hyperas
script: ``mlflow.keras.autolog()`` at module level, a plain ``fit`` in the model.

Autologging wraps ``keras.Model.fit`` as tuning does; each trial's ``fit`` goes through both.
The data are the bundled 8x8 digits, for an offline CI run; only the import of optim differs
from hyperas.
"""
import sys

import keras
import mlflow
import mlflow.keras
from hyperas.distributions import choice, uniform
from hyperopt import STATUS_OK, Trials, tpe
from sklearn.datasets import load_digits

from tuning import optim  # was: from hyperas import optim

mlflow.keras.autolog()


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    return x[:400], y[:400], x[400:600], y[400:600]


def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([
        keras.Input([64]),
        keras.layers.Dense({{choice([16, 32])}}, activation="relu"),
        keras.layers.Dropout({{uniform(0, 0.5)}}),
        keras.layers.Dense(10),
    ])
    net.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                optimizer=keras.optimizers.Adam(0.001),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    net.fit(x_train, y_train, batch_size=64, epochs=2, validation_data=(x_test, y_test), verbose=0)
    _, accuracy = net.evaluate(x_test, y_test, verbose=0)
    return {"loss": -accuracy, "status": STATUS_OK, "model": net}


if __name__ == "__main__":
    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_experiment("autologged")
    best_run, best_model = optim.minimize(model=model, data=data, algo=tpe.suggest, max_evals=1,
                                          trials=Trials())
    print("best model:", type(best_model).__name__, best_model.count_params())
