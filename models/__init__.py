"""ppl.models: applications written with the language and the transforms.

- :mod:`ppl.models.cone`: the noisy cone, Table 4 of the programmable-VI paper (the
  README's main job);
- :mod:`ppl.models.vae`: the Table 1 VAE trained on scikit-learn's digits with six objectives;
- :mod:`ppl.models.sbn`: a sigmoid belief net VAE with 32 Bernoulli latents, trained with
  score-function and measure-valued estimators;
- :mod:`ppl.models.unnormalized`: maximum likelihood for energy models (MECO's compositional
  estimator, the self-normalized bound, NCE, naive autodiff) on 1D, 2D and digits data;
- :mod:`ppl.models.partseg`: PartSLIP++'s EM for multi-view 3D part segmentation as a
  program, on generated furniture, beside the PartSLIP heuristic;
- :mod:`ppl.models.quickstart`: one model, one hand-written ELBO, five strategies.
"""
