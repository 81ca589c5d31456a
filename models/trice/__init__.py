"""Chain-of-thought training as latent-variable MCMC-EM (TRICE) as a probabilistic program.

- :mod:`.tasks`: the chain-sum and k-hop pointer tasks, vocabulary, disjoint held-out split, ``correct``;
- :mod:`.transformer`: the small causal transformer, ``log p(z | x)``, KV-cache samplers, the program;
- :mod:`.pretrain`: the imperfect base model (noisy scratchpads + hinted gold rationales), cached on disk;
- :mod:`.sequence`: ``p(z | x)`` over whole rationales as one distribution (teacher-forced ``log_prob``);
- :mod:`.trice`: the chain-of-thought program and TRICE's estimators (``T.mcmc_em`` and
  ``T.mcmc_em_control_variate`` over it);
- :mod:`.train`: TRICE and the baselines (STaR, rejection sampling, direct, gold) on equal budgets,
  checkpointed and resumable;
- :mod:`.benchmark`: ``python -m ppl.models.trice``.
"""
