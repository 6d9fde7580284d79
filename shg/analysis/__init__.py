"""`shg analyze`: what the trained SHG has learned (latent PCA walks, skeleton clusters, skip
ablation). Each analysis writes PNGs and the numbers behind them as JSON."""
