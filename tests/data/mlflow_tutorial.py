"""The hyperas + MLflow MNIST tutorial, as written but for the data (the bundled 8x8 digits,
offline) and the size of a CI run, with only the import of optim changed.

It chooses its store with ``mlflow.set_tracking_uri`` (here: the URL given as the first
argument) and its experiment with ``mlflow.set_experiment``, logs inside the model with
MLflow's fluent calls, and returns no model, to save memory.
"""
import sys

import mlflow
import mlflow.keras
from hyperas.distributions import quniform, uniform
from hyperopt import STATUS_OK, Trials, tpe
from keras.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from keras.models import Sequential
from keras.utils import to_categorical
from sklearn.datasets import load_digits

from tuning import optim  # was: from hyperas import optim


def data():
    digits = load_digits()
    x = digits.images.reshape(-1, 8, 8, 1).astype("float32") / 16
    y = to_categorical(digits.target, 10)
    return x[:400], y[:400], x[400:600], y[400:600]


def model(x_train, y_train, x_test, y_test):
    f1 = {{quniform(4, 16, 4)}}
    k1 = {{quniform(2, 3, 1)}}
    d1 = {{uniform(0, 0.5)}}
    dense = {{quniform(16, 64, 16)}}
    model = Sequential()
    model.add(Conv2D(int(f1), kernel_size=int(k1), activation="relu", padding="same", input_shape=(8, 8, 1)))
    model.add(MaxPooling2D(2))
    model.add(Dropout(d1))
    model.add(Flatten())
    model.add(Dense(int(dense), activation="relu"))
    model.add(Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    score, acc = model.evaluate(x_test, y_test, verbose=0)
    with mlflow.start_run():
        mlflow.keras.log_model(model, "model")
        mlflow.set_tags({"f1": f1, "k1": k1, "d1": d1, "dense": dense})
        mlflow.log_metric("accuracy", acc)
    # The model is not returned, to save memory.
    return {"loss": -acc, "status": STATUS_OK}


if __name__ == "__main__":
    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_experiment("MNIST hyperas")
    best_run, best_model = optim.minimize(model=model, data=data, algo=tpe.suggest, max_evals=2,
                                          trials=Trials())
    print("best run:", best_run)
    print("best model:", type(best_model).__name__, best_model.count_params())
