"""open-instruct @30d11b4 semantics for the Tulu 3 preference and RL twins (DPO, reward model, RLVR).

Pure functions over tensors and rows, re-implemented from the upstream code's behaviour (not copied), so
that the trainers stay thin and every rule has a unit test: ``dpo`` (losses, log-probs, metric reduction),
``rm`` (reward read-out, Bradley-Terry loss, filter quirk), ``ppo`` (masked statistics, KL estimators,
GAE, clipped losses, derived batch quantities), ``verifiable`` (GSM8K / MATH / IFEval checks) and
``data`` (offline preference and RLVR rows).
"""
