r"""Maximum likelihood for unnormalized (energy) models: MECO, the self-normalized bound, NCE, naive.

A model is ``log_density(params, x) = log p̃(x; θ) − c`` for one datum (``params["c"]`` is NCE's
learned log-normalizer; it cancels in the likelihood). The same function is trained with

* MLE, ``NLL(θ) = −mean log p̃(x) + log E_{z~q}[p̃(z)/q(z)]`` (:func:`ppl.transforms.unnormalized_nll`),
  ``log Z`` at address ``"log_partition"`` estimated by MECO's moving average
  (``T.compositional``), the self-normalized bound (``T.self_normalized_bound``) or plain autodiff
  through the log of the minibatch mean (``T.naive``, biased);
* noise-contrastive estimation (:func:`ppl.transforms.nce`).

Modules: :mod:`.data` (1D Gaussian, 2D toy sets, digits, noise distributions), :mod:`.energies`
(Gaussian mean, tilted MLP), :mod:`.evaluate` (grid and importance normalization), :mod:`.landscape`
(the exact 1D population landscape), :mod:`.train` (jitted, seed-vmapped Adam loops) and
:mod:`.benchmark` (``python -m ppl.models.unnormalized [--quick] [--scale full] [--json PATH]``).

Example:
    >>> import jax
    >>> from ppl.models.unnormalized import data, energies, evaluate, train
    >>> train_x, test_x = data.toy_2d_split("moons", 5000, 1000)
    >>> model = energies.tilted_mlp(*data.fit_gaussian(train_x), width=32)
    >>> noise = data.noise("fitted", train_x)
    >>> result = train.train("mle", "compositional", model, train_x, noise, steps=200, batch=128, lr=1e-3)
    >>> nll = evaluate.grid_nll(model.log_density, result.seed_params(0), test_x)
"""

from ppl.models.unnormalized import benchmark, data, energies, evaluate, landscape, train
from ppl.models.unnormalized.energies import EnergyModel, gaussian_mean, tilted_mlp
from ppl.models.unnormalized.train import ESTIMATORS, OBJECTIVE_OF, TrainResult

__all__ = [
    "ESTIMATORS",
    "OBJECTIVE_OF",
    "EnergyModel",
    "TrainResult",
    "benchmark",
    "data",
    "energies",
    "evaluate",
    "gaussian_mean",
    "landscape",
    "tilted_mlp",
    "train",
]
