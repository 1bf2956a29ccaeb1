"""The diffusion policy back-end (README "Image generation"): a denoising trajectory is the response, its
log-probability the sum of the stochastic sampler's Gaussian step densities; REBEL, PPO (DDPO) and DPO run on
it through their one implementation and the one loop. Needs the ``diffusion`` extra."""
