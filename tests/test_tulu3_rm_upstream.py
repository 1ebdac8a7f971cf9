"""The reward-model twin against reward_modeling.py @30d11b4 as it really runs (accelerate 0.31, DeepSpeed
ZeRO-3): one test per difference the first upstream run at twin scale found (shared/research/
upstream-at-twin-scale.md). Each fails on the twin's earlier behaviour: a redrawn score head, a data order
chosen by --seed, no clipping."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch", reason="the reward-model twin needs torch")
transformers = pytest.importorskip("transformers")

from accelerate.utils import DistributedType  # noqa: E402

from harness.open_instruct import reward_modeling as rmt  # noqa: E402
from harness.open_instruct import rm  # noqa: E402

CPU = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu"),
                      is_main_process=True, process_index=0)


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A saved LlamaForCausalLM (hidden 16) with a word-level tokenizer: what the SFT stage hands the RM."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("sft")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(29)]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
                      initializer_range=0.02)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_score_head_keeps_from_pretrained_init_under_zero3(tiny_causal_lm):
    """Cause 1: under ZeRO-3 layer_init(model.score) writes into a (0,)-shaped placeholder; the head keeps
    the N(0, initializer_range) draw from_pretrained gave the missing key. The old twin redrew it with
    std 1/sqrt(hidden + 1)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(7)
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_causal_lm, num_labels=1, dtype=torch.float32)
    torch.manual_seed(7)
    model, _ = rmt.load_model_and_tokenizer(rmt.ModelConfig(), rmt.Args(), rmt.DatasetConfig(chat_template="tulu"),
                                            str(tiny_causal_lm), CPU)
    assert rmt.zero_stage(CPU) == 3
    assert torch.equal(model.score.weight, ref.score.weight)
    # the rule itself: the draw lands where the weight is whole (stages 0-2)
    layer = torch.nn.Linear(16, 1, bias=False)
    before = layer.weight.detach().clone()
    assert not rm.layer_init(layer, 0.5, 3) and torch.equal(layer.weight, before)
    assert rm.layer_init(layer, 0.5, 2) and not torch.equal(layer.weight, before)


def _rank0_order(global_seed: int, n: int = 24) -> list[int]:
    from accelerate.data_loader import prepare_data_loader

    ds = [{"i": i} for i in range(n)]
    loader = rmt.train_loader(ds, rmt.Args(per_device_train_batch_size=1), 2,
                              lambda b: torch.tensor([r["i"] for r in b]))
    torch.manual_seed(global_seed)
    shard = prepare_data_loader(loader, num_processes=2, process_index=0, put_on_device=False)
    return [int(b[0]) for b in shard]


def test_data_order_is_accelerate_031s_default_generator_not_the_seed():
    """Cause 2: accelerate 0.31 gives the sampler torch.Generator() (fixed default seed), so --seed (the
    torch.manual_seed(args.seed) before prepare) does not choose the order; accelerate 1.x, left to
    itself, seeds the generator from the global RNG. The old twin let it."""
    expected = torch.randperm(24, generator=torch.Generator()).tolist()[0::2]  # rank 0: every other batch
    assert torch.Generator().initial_seed() == rm.TORCH_DEFAULT_GENERATOR_SEED
    assert _rank0_order(1) == expected
    assert _rank0_order(2) == expected
    # one process: accelerate does not touch the sampler, which seeds itself from the global RNG
    assert rm.sampler_generator(1) is None


def test_cpu_path_clips_at_deepspeeds_one():
    """Cause 3: accelerate fills the published engine's gradient_clipping with 1.0; the CPU twin (no
    DeepSpeed) clips there itself, and not at all under DeepSpeed (the engine does). The old twin never
    clipped."""
    from harness.open_instruct import finetune as sft

    assert rmt.clip_value(CPU) == rm.DEEPSPEED_PLUGIN_CLIP == 1.0
    assert rmt.clip_value(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)) < 0
    model = torch.nn.Linear(4, 1)
    (model(torch.full((2, 4), 100.0)).sum()).backward()

    class Acc:  # the one accelerate call the norm helper makes on the CPU path
        distributed_type = DistributedType.MULTI_CPU

        @staticmethod
        def clip_grad_norm_(params, max_norm):
            return torch.nn.utils.clip_grad_norm_(params, max_norm)

    before, after = sft.gradient_norm(Acc, model, rmt.clip_value(CPU))
    assert before > 10 and after == pytest.approx(1.0, rel=1e-5)


def test_recipe_holds_the_clip_in_a_check(recipes):
    """The twin's metrics carry the applied norm and the recipe checks it never exceeds the clip."""
    checks = [c for c in recipes["tulu3-8b-rm"].twin.checks if c.metric == "extra.grad_norm_after_clip"]
    assert checks and checks[0].kind == "max_at_most" and checks[0].value == 1.0
    kept = json.dumps(recipes["tulu3-8b-rm"].twin.kept)
    assert "no gradient clipping" not in kept
