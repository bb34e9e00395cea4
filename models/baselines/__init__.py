"""The yardsticks: simple, strong recommenders the engine's own recipe must beat on the same replay.

Each one is a small estimator with the same three calls, so the prequential replay
(``batch.evaluate.prequential``) drives them all the same way:

* ``learn(user, item, t_ms)``: one interaction (``item`` is the catalogue index the replay gives
  each item on its first appearance: 0, 1, 2, ...);
* ``refit(now_ms)``: a retrain boundary (the models refit there; online ones ignore it);
* ``scores(user, items)``: a score per candidate index, higher is better.

They learn from every interaction (any event type: what a user touched, liked or not), which is
what their papers do with implicit feedback. Hyperparameters live in ``BaselineSettings``
(``infra.settings``) and were chosen on a validation window before the evaluated one
(docs/quality.md), as were the engine's.
"""

from models.baselines.ease import EASE
from models.baselines.item_knn import ItemKNN
from models.baselines.popularity import Popularity
from models.baselines.sasrec import SASRec

__all__ = ["EASE", "ItemKNN", "Popularity", "SASRec"]
