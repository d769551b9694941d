"""The learning round as stages, each a module with a narrow input and output:

- ``plan``: what a round will do (cutoff, parent, privacy, canaries, overrides): ``RoundPlan``
- ``run``: the worker exchange (jobs, the runs table, a training run into a candidate)
- ``privacy``: differential privacy wrapped around the run stage (plan, ledger charge)
- ``judge``: the gate worker's evidence into verdicts and a decision: ``Judgement``
- ``commit``: a decision into the registry, the gate log, incidents: ``RoundResult``
- ``watch``: after a round: label report, cross-tenant divergence, shadows, the I2 probe

and compositions of them: ``round`` (one round), ``remediation`` (a leaking candidate
retried), ``reaudit`` (gates rerun on what serves), ``sweep`` (the accuracy-privacy sweep).
``silolearn.pipeline.Trainer`` is the facade that callers use."""
