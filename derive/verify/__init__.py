"""Numerical verification helpers: test problems with exact denoisers and convergence-order fitting.

* :mod:`derive.verify.problems` -- Gaussian and Gaussian-mixture data with closed-form denoisers,
  high-accuracy reference solutions of the probability-flow ODE, and noise-level schedules.
* :mod:`derive.verify.orders` -- robust estimation of an empirical order of convergence.
"""
