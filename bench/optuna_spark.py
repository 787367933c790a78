"""The field's own answer to parallel trials: MLflow 3's ``mlflow.pyspark.optuna``.

    .venv/bin/python bench/optuna_spark.py --tracking-uri http://127.0.0.1:5000 \\
        --experiment optuna-spark --max-evals 16 --parallelism 2

``MlflowSparkStudy`` over ``MlflowStorage`` (the tracking server is the study's store;
Optuna's TPE runs on the Spark executors) on a local Spark with ``--parallelism`` slots,
on the same work as ``recipes/digits_cnn.py``: the same data, net, ranges and epochs, one
thread per trial as ``tuning run --parallelism 2`` gives each slot on this machine. The
objective is written as an Optuna user writes it: ``trial.suggest_*`` calls, the test
accuracy returned. bench/parallel.py runs it as one of its settings.
"""

from __future__ import annotations

import argparse
import os
import sys


def objective(trial):  # noqa: ANN001, ANN201 - Optuna's own signature
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # in each trial, as a plain Optuna objective has it (about 20 ms)
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = keras.utils.to_categorical(digits.target, 10)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    net = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(filters=trial.suggest_int("filters", 8, 32, step=8),
                            kernel_size=trial.suggest_categorical("kernel_size", [2, 3]),
                            activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(trial.suggest_float("Dropout", 0.0, 0.5)),
        keras.layers.Dense(trial.suggest_int("Dense", 16, 128, step=16), activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    learning_rate = trial.suggest_float("learning_rate", float(np.exp(-7)), float(np.exp(-3)), log=True)
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=5, batch_size=trial.suggest_categorical("batch_size", [16, 32, 64]),
            validation_data=(x_test, y_test), verbose=0)
    return net.evaluate(x_test, y_test, verbose=0)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--max-evals", type=int, default=16, help="trials (as tuning run names it)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import mlflow
    import optuna
    from mlflow.optuna.storage import MlflowStorage
    from mlflow.pyspark.optuna.study import MlflowSparkStudy
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    threads = str(max(1, (os.cpu_count() or 1) // args.parallelism))
    builder = (SparkSession.builder.master(f"local[{args.parallelism}]").appName("optuna-spark")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false"))
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        builder = builder.config(f"spark.executorEnv.{name}", threads)
    builder = builder.config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "3")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        mlflow.set_tracking_uri(args.tracking_uri)
        experiment_id = mlflow.set_experiment(args.experiment).experiment_id
        study = MlflowSparkStudy(args.experiment, MlflowStorage(experiment_id=experiment_id),
                                 sampler=optuna.samplers.TPESampler(seed=args.seed),
                                 mlflow_tracking_uri=args.tracking_uri, direction="maximize")
        study.optimize(objective, n_trials=args.max_evals, n_jobs=args.parallelism)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
