"""Models from candles: train and register, tuning, ensembles, evaluation, batch prediction."""
