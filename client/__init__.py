"""The ClientApp: a site's data, policy, budget guard, DP-SGD training and masked update."""
