"""Everything that thinks: Upbit client, features, labels, training, strategies, live engine."""
