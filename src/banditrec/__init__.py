"""banditrec: a self-hosted, real-time contextual-bandit decision engine."""

__version__ = "0.1.0"
