"""A regression recipe: scikit-learn's bundled diabetes data, an MLP with L1/L2 penalties.

    tuning run recipes/diabetes_regression.py --max-evals 20
    tuning run recipes/diabetes_regression.py --algo grid --fraction 0.001
    tuning pbt recipes/diabetes_regression.py --population 8 --rounds 5

In the spirit of pbt-keras' Boston housing example. The objective is val_loss (the mean
squared error on the held-out quarter, plus the penalties), minimised: OBJECTIVE names
it, and names with "loss" are minimised. Every marker is discrete, so the space is also
a grid (5 × 5 × 8 × 5 × 4 × 3 = 12,000 points); the learning rate, the dropout rate and
the two penalty factors are what `tuning pbt` changes while the members train.
"""

import keras
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

EXPERIMENT = "diabetes_regression"
MAX_EVALS = 20
OBJECTIVE = "val_loss"
MODE = "min"


def data():
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(x_train)
    scale = y_train.std()  # targets in units of their spread, so losses are readable
    return (scaler.transform(x_train).astype("float32"), (y_train / scale).astype("float32"),
            scaler.transform(x_test).astype("float32"), (y_test / scale).astype("float32"))


def model(x_train, y_train, x_test, y_test):
    penalty = keras.regularizers.L1L2(l1=<<choice([0.0, 1e-5, 1e-4, 1e-3, 1e-2])>>,
                                      l2=<<choice([0.0, 1e-5, 1e-4, 1e-3, 1e-2])>>)
    net = keras.Sequential([
        keras.Input(shape=(x_train.shape[1],)),
        keras.layers.Dense(<<quniform(16, 128, 16)>>, activation="relu", kernel_regularizer=penalty),
        keras.layers.Dropout(<<quniform(0.0, 0.4, 0.1)>>),
        keras.layers.Dense(1),
    ])
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=<<choice([1e-3, 3e-3, 1e-2, 3e-2])>>),
                loss="mse", metrics=["mae"])
    net.fit(x_train, y_train, epochs=60, batch_size=<<choice([16, 32, 64])>>,
            validation_data=(x_test, y_test))
    return net
