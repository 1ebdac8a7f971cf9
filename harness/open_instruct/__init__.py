"""open-instruct @30d11b4 (Tulu 3): the entry points' semantics for the twins.

finetune.py is the SFT entry point; encoding, model_setup and common hold what open-instruct's entry
points share upstream too (the chat-template encoding, pad/resize/template handling, optimizer
groups, schedule, resume and checkpoint rules), so a second entry point (DPO, RM) reuses them.

The preference and RL entry points: dpo_tune.py / dpo_tune_cache.py, reward_modeling.py and
ppo_vllm_thread_ray_gtrl.py, over pure semantics modules (dpo, rm, ppo, verifiable) and the offline data
and start-model builders (pref_data, rlvr_data, start_models).
"""

import logging

#: Upstream logs through accelerate's get_logger(__name__) in a script, i.e. the "__main__" logger.
logger = logging.getLogger("__main__")


def log_main(accelerator, message: str) -> None:
    from harness.runtime.logs import log_main as _log  # lazy: `import harness.open_instruct` (asset builders do) stays free of the runtime

    _log(logger, accelerator, message)
