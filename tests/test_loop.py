"""The trial loop proposes what hyperopt's fmin proposes for the same seed, past TPE's start-up."""

from __future__ import annotations

import json

import numpy as np
from hyperopt import STATUS_OK, Trials, fmin, tpe
from mlflow import MlflowClient

import tuning

# No training: the loss is a formula of the values, so the study and fmin see the same losses.
LOSS_OF = """
def loss_of(units, rate, activation):
    import math
    return round(abs(math.log10(rate) + 2.5) + abs(units - 40) / 50 + (activation == "tanh") * 0.3, 3)
"""
FORMULA = LOSS_OF + """

def data():
    return ()


def model():
    units, rate, activation = <<quniform(8, 64, 8)>>, <<loguniform(-7, -1)>>, <<choice(["relu", "tanh"])>>
    return {"loss": loss_of(units, rate, activation), "status": "ok"}
"""


def test_a_study_proposes_what_fmin_proposes_with_the_same_seed(tmp_path, store):
    recipe = tmp_path / "formula.py"
    recipe.write_text(FORMULA)
    study = tuning.minimize(str(recipe), max_evals=30, seed=3, tracking_uri=store, log_model=False,
                            progress=False)

    namespace: dict = {}
    exec(LOSS_OF, namespace)
    names = list(study.space)  # in the recipe's order: units, rate, activation
    trials = Trials()
    fmin(lambda p: {"loss": namespace["loss_of"](*[p[n] for n in names]), "status": STATUS_OK},
         {name: d.to_hyperopt(name) for name, d in study.space.items()}, algo=tpe.suggest,
         max_evals=30, trials=trials, rstate=np.random.default_rng(3), show_progressbar=False)

    runs = MlflowClient(store).search_runs([study.experiment_id], "tags.`tuning.kind` = 'trial'")
    ours = {int(r.data.tags["tuning.trial"]): json.loads(r.data.tags["tuning.hyperopt_vals"]) for r in runs}
    theirs = {doc["tid"] + 1: {k: v[0] for k, v in doc["misc"]["vals"].items()} for doc in trials.trials}
    assert sorted(ours) == list(range(1, 31))
    assert ours == theirs  # the 10 proposals after TPE's 20 random ones included
    assert [t.loss for t in sorted(study.trials, key=lambda t: t.number)] == trials.losses()
