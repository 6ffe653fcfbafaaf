"""Pure functions of a problem's tables: dp, price / softmax / ADMM, shaped (uniform, OWL), repair."""
