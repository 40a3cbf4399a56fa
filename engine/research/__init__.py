"""Pure candles → rows: features (one spec, one function for training and live), labels,
chronological splits with purge and embargo, datasets, metrics."""
