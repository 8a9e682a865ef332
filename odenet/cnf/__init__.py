"""Continuous normalizing flows on 2-D toy densities (the paper's section 4).

    datasets.py  toy densities generated from a seed; closed-form log-densities
    trace.py     tr(∂f/∂z): exact (D autograd calls) or Hutchinson (one VJP)
    fields.py    vector fields f(t, z): the paper's hypernetwork, a concat-t MLP, linear
    cnf.py       CNF: state [z, log p] solved with odenet.solvers (adjoint)
    planar.py    the baseline: planar normalizing flow with K layers
"""
