"""Self-check of recipes/_entrypoints/*.yaml: structure, cross-references, and facts verified upstream."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

DIR = Path(__file__).resolve().parent.parent / "recipes" / "_entrypoints"
FILES = sorted(DIR.glob("*.yaml"))

TOP_KEYS = {"id", "kind", "upstream", "parser", "allow_abbrev", "unknown_flags", "bool_style", "includes",
            "source_note", "flags"}
LAUNCHER_KEYS = {"script_positional", "module_flag"}
FLAG_KEYS = {"type", "default", "nargs", "choices", "required", "aliases", "settable", "note"}
TYPES = {"str", "int", "float", "bool", "json"}
NARGS = {"?", "+", "*"}


def _load() -> dict[str, dict]:
    out = {}
    for f in FILES:
        doc = yaml.safe_load(f.read_text())
        assert doc["id"] not in out, f"duplicate id {doc['id']}"
        out[doc["id"]] = doc
    return out


SCHEMAS = _load()


def options(schema_id: str) -> dict[str, str]:
    """Every accepted option string -> flag key, included files first (the including file wins)."""
    doc = SCHEMAS[schema_id]
    out: dict[str, str] = {}
    for inc in doc["includes"]:
        out.update(options(inc))
    for key, spec in doc["flags"].items():
        out["--" + key] = key
        for alias in spec.get("aliases", []):
            out[alias] = key
    return out


def flag(schema_id: str, key: str) -> dict:
    doc = SCHEMAS[schema_id]
    if key in doc["flags"]:
        return doc["flags"][key]
    for inc in doc["includes"]:
        try:
            return flag(inc, key)
        except KeyError:
            pass
    raise KeyError(key)


def resolve(schema_id: str, token: str) -> str | None:
    """argparse's option lookup: exact match, else a unique prefix when allow_abbrev (None: unknown)."""
    name = token.split("=", 1)[0]
    opts = options(schema_id)
    if name in opts:
        return opts[name]
    if SCHEMAS[schema_id]["allow_abbrev"]:
        hits = [o for o in opts if o.startswith(name)]
        if len(hits) > 1:
            raise AssertionError(f"{token} is ambiguous in {schema_id}: {hits}")
        if hits:
            return opts[hits[0]]
    return None


# ------------------------------------------------------------------------------------------ structure


def test_files_present():
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_structure(path: Path):
    doc = yaml.safe_load(path.read_text())
    missing = TOP_KEYS - doc.keys()
    assert not missing, missing
    extra = doc.keys() - TOP_KEYS - LAUNCHER_KEYS
    assert not extra, extra
    assert path.name == re.sub(r"[@:/]", "_", doc["id"]) + ".yaml"
    assert re.fullmatch(r"[a-z0-9.-]+@[0-9A-Za-z.]+:\S+", doc["id"]), doc["id"]
    assert doc["kind"] in {"entry", "launcher"}
    assert set(doc["upstream"]) == {"repo", "commit", "path"}
    assert re.fullmatch(r"[0-9a-f]{40}|v\d+\.\d+\.\d+", doc["upstream"]["commit"]), doc["upstream"]["commit"]
    assert doc["parser"] in {"hf_argparser", "argparse", "fast_llm_flat"}
    assert isinstance(doc["allow_abbrev"], bool)
    assert doc["unknown_flags"] in {"error", "ignored"}
    assert doc["bool_style"] in {"value", "store_true", "int"}
    assert isinstance(doc["includes"], list)
    assert isinstance(doc["source_note"], str) and len(doc["source_note"]) > 40
    if doc["kind"] == "launcher":
        assert doc["script_positional"] is True
        assert isinstance(doc["module_flag"], list) and doc["module_flag"]
    else:
        assert not (LAUNCHER_KEYS & doc.keys())
    assert doc["flags"], "no flags"
    seen: set[str] = set()
    for key, spec in doc["flags"].items():
        assert isinstance(key, str) and key and not key.startswith("-"), key
        assert not (spec.keys() - FLAG_KEYS), (key, spec.keys() - FLAG_KEYS)
        assert spec["type"] in TYPES, (key, spec["type"])
        assert "default" in spec, key
        if "nargs" in spec:
            n = spec["nargs"]
            assert n in NARGS or (isinstance(n, int) and not isinstance(n, bool) and n >= 0), (key, n)
        if "choices" in spec:
            assert isinstance(spec["choices"], list) and spec["choices"], key
        if "settable" in spec:
            assert spec["settable"] is False, key
        for opt in ["--" + key, *spec.get("aliases", [])]:
            assert opt.startswith("-"), (key, opt)
            assert opt not in seen, f"option {opt} registered twice"
            seen.add(opt)


def test_includes_exist_and_acyclic():
    def walk(i: str, stack: tuple[str, ...]) -> None:
        assert i in SCHEMAS, f"unknown include {i}"
        assert i not in stack, f"include cycle {stack + (i,)}"
        for inc in SCHEMAS[i]["includes"]:
            walk(inc, stack + (i,))

    for i in SCHEMAS:
        walk(i, ())


@pytest.mark.parametrize("schema_id", [i for i, d in SCHEMAS.items() if d["parser"] == "hf_argparser"])
def test_hf_no_forms(schema_id: str):
    """HfArgumentParser adds a store_false --no_<field> for each bool field defaulting to True."""
    flags = SCHEMAS[schema_id]["flags"]
    for key, spec in flags.items():
        if spec["type"] == "bool" and spec.get("nargs") == "?" and spec["default"] is True:
            includes = SCHEMAS[schema_id]["includes"]
            assert f"no_{key}" in flags or any(f"no_{key}" in SCHEMAS[i]["flags"] for i in includes), key
        if key.startswith("no_") and spec.get("nargs") == 0:
            assert spec["default"] is False


# ------------------------------------------------------------------------------------------ facts

OI = "open-instruct@30d11b4:open_instruct/"
FMS = "fms-hf-tuning@3.2.2:tuning.sft_trainer"
FMS_PR = "fms-hf-tuning@80d25b9:tuning.sft_trainer"
TOOLGEN = "toolgen@6839374:training/train.py"
ACERAG = "lightrag@bce608d:AceRAG/main/train_compressive_encoder.py"
FASTLLM = "fast-llm@1aa6040:fast_llm/tools/train.py"


def test_open_instruct_facts():
    rl = flag(OI + "finetune.py", "reduce_loss")
    assert rl["default"] == "mean" and rl["choices"] == ["mean", "sum"]
    assert flag(OI + "finetune.py", "push_to_hub")["default"] is True
    assert "no_push_to_hub" in SCHEMAS[OI + "finetune.py"]["flags"]
    assert flag(OI + "finetune.py", "try_launch_beaker_eval_jobs")["default"] is True
    assert flag(OI + "finetune.py", "chat_template_name")["default"] == "tulu"
    assert flag(OI + "finetune.py", "dataset_mixer").get("settable") is False  # dict field: no CLI spelling
    assert flag(OI + "dpo_tune.py", "dpo_loss_type")["default"] == "dpo"
    assert "concatenated_forward" in SCHEMAS[OI + "dpo_tune_cache.py"]["flags"]
    assert "concatenated_forward" not in SCHEMAS[OI + "dpo_tune.py"]["flags"]
    assert flag(OI + "reward_modeling.py", "dataset_mixer")["type"] == "json"
    assert "no_gather_whole_model" in SCHEMAS[OI + "ppo_vllm_thread_ray_gtrl.py"]["flags"]
    assert flag(OI + "ppo_vllm_thread_ray_gtrl.py", "stop_token")["choices"] == ["eos", "period"]
    for f in ("finetune.py", "dpo_tune.py", "reward_modeling.py", "ppo_vllm_thread_ray_gtrl.py"):
        doc = SCHEMAS[OI + f]
        assert doc["unknown_flags"] == "error" and doc["allow_abbrev"] is True and doc["includes"] == []


def test_fms_facts():
    for i in (FMS, FMS_PR):
        doc = SCHEMAS[i]
        assert doc["unknown_flags"] == "ignored" and doc["allow_abbrev"] is True
        assert doc["includes"] == ["transformers@4.55.4:TrainingArguments"]
        assert flag(i, "logging_strategy")["default"] == "epoch"
        assert flag(i, "save_strategy")["default"] == "epoch"
        assert flag(i, "trackers")["default"] == ["file_logger"]
        assert flag(i, "r")["default"] == 8 and flag(i, "lora_alpha")["default"] == 32
        assert flag(i, "torch_dtype")["default"] == "bfloat16"
        assert flag(i, "max_seq_length")["default"] == 4096
        assert flag(i, "peft_method")["default"] == "none"
        # what the seed's flags resolve to
        assert resolve(i, "--lora_r") is None  # silently dropped with its value
        assert resolve(i, "--tracker") == "trackers"
        assert resolve(i, "--data_config") == "data_config_path"
        assert resolve(i, "--data_formatter_template:") is None  # the seed's stray colon
        for exact in ("lora_alpha", "lora_dropout", "target_modules", "dequantize",
                      "flash_attn_implementation", "aim_repo", "experiment", "use_flash_attn", "torch_dtype", "max_seq_length",
                      "response_template", "dataset_text_field", "data_formatter_template",
                      "tokenizer_name_or_path", "training_data_path", "fast_moe", "quantization_method",
                      "lr_scheduler_kwargs", "gradient_checkpointing", "logging_steps"):
            assert resolve(i, "--" + exact) == exact, exact
    assert "mcp" not in SCHEMAS[FMS]["flags"] and resolve(FMS, "--mcp") is None
    assert resolve(FMS_PR, "--mcp") == "mcp" and flag(FMS_PR, "mcp")["nargs"] == "+"


def test_hf_versions():
    assert flag("transformers@4.43.4:TrainingArguments", "output_dir").get("required") is True
    assert "aliases" not in flag("transformers@4.43.4:TrainingArguments", "learning_rate")
    assert flag("transformers@4.55.4:TrainingArguments", "output_dir").get("required") is None
    assert "--learning-rate" in flag("transformers@4.55.4:TrainingArguments", "learning_rate")["aliases"]
    assert flag("transformers@4.55.4:TrainingArguments", "logging_strategy")["default"] == "steps"
    # 4.57.3 types lr_scheduler_kwargs as Union[dict, str] without None: argparse gets type=dict
    assert flag("transformers@4.57.3:TrainingArguments", "lr_scheduler_kwargs").get("settable") is False
    assert flag("transformers@4.55.4:TrainingArguments", "lr_scheduler_kwargs")["type"] == "json"
    assert "parallelism_config" in SCHEMAS["transformers@4.57.3:TrainingArguments"]["flags"]
    assert "average_tokens_across_devices" in SCHEMAS["transformers@4.55.4:TrainingArguments"]["flags"]
    assert "average_tokens_across_devices" not in SCHEMAS["transformers@4.43.4:TrainingArguments"]["flags"]


def test_toolgen_and_acerag_facts():
    assert SCHEMAS[TOOLGEN]["includes"] == ["transformers@4.48.3:TrainingArguments"]
    assert flag(TOOLGEN, "add_virtual_tokens") == {
        "type": "bool", "nargs": "?", "default": False, "aliases": ["--add-virtual-tokens"]}
    assert flag(TOOLGEN, "gather_weights")["default"] is True
    assert flag(TOOLGEN, "dataset_nums")["type"] == "int" and flag(TOOLGEN, "dataset_nums")["nargs"] == "+"
    assert flag(TOOLGEN, "optim")["default"] == "adamw_torch"
    assert SCHEMAS[ACERAG]["includes"] == ["transformers@4.57.3:TrainingArguments"]
    cc = flag(ACERAG, "comp_candidates")
    assert cc["type"] == "int" and cc["nargs"] == "+" and cc["default"] == [2, 4, 8, 16, 32]
    assert flag(ACERAG, "learning_rate")["default"] == 1e-4 and flag(ACERAG, "warmup_ratio")["default"] == 0.1
    assert flag(ACERAG, "report_to")["default"] == "none"
    assert resolve(ACERAG, "--lora_r") is None  # LoraArgs is not registered


SEED_FLAGS = {
    OI + "finetune.py": (
        "checkpointing_steps dataset_mix_dir dataset_mixer_list exp_name gradient_accumulation_steps "
        "gradient_checkpointing keep_last_n_checkpoints learning_rate logging_steps lr_scheduler_type "
        "max_seq_length model_name_or_path model_revision num_train_epochs output_dir "
        "per_device_train_batch_size preprocessing_num_workers reduce_loss report_to seed tokenizer_name "
        "use_flash_attn use_slow_tokenizer warmup_ratio weight_decay with_tracking"
    ),
    OI + "dpo_tune.py": (
        "checkpointing_steps dataset_mixer_list dpo_beta dpo_loss_type exp_name use_lora "
        "gradient_accumulation_steps learning_rate max_seq_length use_slow_tokenizer with_tracking"
    ),
    OI + "dpo_tune_cache.py": (
        "checkpointing_steps dataset_mixer_list dpo_beta dpo_loss_type use_lora"
    ),
    OI + "reward_modeling.py": (
        "chat_template dataset_eval_mixer dataset_eval_splits dataset_mixer dataset_train_splits "
        "max_prompt_token_length max_token_length per_device_eval_batch_size push_to_hub"
    ),
    OI + "ppo_vllm_thread_ray_gtrl.py": (
        "actor_num_gpus_per_node apply_verifiable_reward beta deepspeed_stage ground_truths_key "
        "local_mini_batch_size local_rollout_batch_size local_rollout_forward_batch_size "
        "no_gather_whole_model non_stop_penalty num_evals penalty_reward_value response_length "
        "reward_model_multiplier reward_model_path save_freq sft_messages_key stop_token temperature "
        "total_episodes vllm_num_engines vllm_tensor_parallel_size warmup_ratio"
    ),
    TOOLGEN: (
        "model_name_or_path add_virtual_tokens flash_attention deepspeed chat template architecture "
        "output_dir save_strategy save_steps gather_weights learning_rate warmup_ratio datasets "
        "dataset_nums per_device_train_batch_size gradient_accumulation_steps max_length num_train_epochs "
        "gradient_checkpointing bf16 logging_steps report_to run_name local_rank"
    ),
    ACERAG: (
        "language_model_name_or_path window_mode min_length max_length encoder_name_or_path "
        "encoder_num_hidden_layers window encoder_max_length comp_candidates "
        "pretraining_down_scaling_method data_files output_dir save_strategy save_steps deepspeed "
        "gradient_checkpointing learning_rate attn_implementation per_device_train_batch_size "
        "lm_max_length down_scaling_method stage use_safetensors data_splits train_num_per_data"
    ),
    FASTLLM: (
        "batch_size sequence_length train_iters weight_decay adam_beta1 adam_beta2 clip_grad lr "
        "lr_warmup_iters lr_decay_style lr_decay_iters min_lr training_dtype num_workers micro_batch_size "
        "zero_stage experiment_dir validation_iters validation_interval max_checkpoints export_interval "
        "log_interval log_offset checkpoint_interval wandb_entity_name wandb_project_name "
        "wandb_group_name experiment_name mlp_recompute_level window_size pretrained_checkpoint_type "
        "pretrained_checkpoint_path num_layers hidden_size vocab_size num_attention_heads head_groups "
        "add_linear_biases ffn_hidden_size kv_channels use_rotary_embeddings rotary_embedding_scale gated "
        "activation_type normalization_type tie_word_embeddings split dataset_source data_path "
        "use_pretrained_config load_pretrained_weights"
    ),
    "accelerate@0.31.0:launch": (
        "mixed_precision num_machines num_processes machine_rank main_process_ip main_process_port "
        "use_deepspeed deepspeed_config_file deepspeed_multinode_launcher config_file"
    ),
    "accelerate@1.12.0:launch": (
        "config_file num_processes main_process_port"
    ),
    "deepspeed@0.16.4:deepspeed": (
        "include master_port"
    ),
    "torch@2.7.1:torchrun": (
        "nproc_per_node"
    ),
    "torch@2.4.0:torchrun": (
        "nproc-per-node nnodes rdzv-backend rdzv-endpoint no-python"
    ),
}


@pytest.mark.parametrize("schema_id", sorted(SEED_FLAGS))
def test_seed_command_flags_resolve_exactly(schema_id: str):
    opts = options(schema_id)
    for name in SEED_FLAGS[schema_id].split():
        assert "--" + name in opts, f"{schema_id} lacks --{name}"


def test_fast_llm_facts():
    doc = SCHEMAS[FASTLLM]
    assert doc["bool_style"] == "int" and doc["parser"] == "fast_llm_flat" and doc["unknown_flags"] == "error"
    assert flag(FASTLLM, "add_linear_biases")["type"] == "bool"
    assert flag(FASTLLM, "mlp_recompute_level")["choices"][:2] == ["none", "activation"]
    assert "full" in flag(FASTLLM, "mlp_recompute_level")["choices"]
    assert "huggingface" in flag(FASTLLM, "pretrained_checkpoint_type")["choices"]


def test_launcher_facts():
    for v in ("0.31.0", "1.12.0"):
        doc = SCHEMAS[f"accelerate@{v}:launch"]
        assert doc["allow_abbrev"] is False and "-m" in doc["module_flag"]
    for flag_name in ("use_parallelism_config", "parallelism_config_cp_size",
                      "parallelism_config_dp_shard_size", "fsdp_version"):
        assert flag_name in SCHEMAS["accelerate@1.12.0:launch"]["flags"]
        assert flag_name not in SCHEMAS["accelerate@0.31.0:launch"]["flags"]
    for v in ("0.15.0", "0.16.4"):
        doc = SCHEMAS[f"deepspeed@{v}:deepspeed"]
        assert doc["module_flag"] == ["--module"] and "-m" not in options(doc["id"])
        assert doc["allow_abbrev"] is True
    for v in ("2.4.0", "2.7.1"):
        doc = SCHEMAS[f"torch@{v}:torchrun"]
        assert "-m" in doc["module_flag"] and resolve(doc["id"], "--nproc-per-node") == "nproc_per_node"
