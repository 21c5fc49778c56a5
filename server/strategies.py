"""The aggregation strategy chosen by name: Flower's own FedAvg, FedProx or FedAdam."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from tasks.settings import RunSettings


def make_strategy(settings: RunSettings) -> FedAvg:
    """Flower's strategy for `settings.strategy`, sampling sites as configured."""
    common = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": settings.min_sites,
        "min_evaluate_nodes": settings.min_sites,
        "min_available_nodes": settings.min_sites,
    }
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    if settings.strategy == "fedadam":
        return FedAdam(eta=settings.server_learning_rate, eta_l=settings.learning_rate, **common)
    return FedAvg(**common)
