"""Role engine-predictive: MLServer replicas serving scikit-learn models through Podium's skops runtime."""
