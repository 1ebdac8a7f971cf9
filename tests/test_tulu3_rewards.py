"""Verifiable rewards (GSM8K, MATH, IFEval) on hand-written cases: right, wrong, malformed, met/unmet."""

from __future__ import annotations

import json

import pytest

from harness.open_instruct import verifiable as v

A = "<|user|>\nQuestion: what is 3 + 4?\n<|assistant|>\n"


@pytest.mark.parametrize(
    ("output", "truth", "ok"),
    [
        (A + "3 + 4 = 7. The answer is 7.", "7", True),
        (A + "The answer is 1,234.", "1234", True),  # thousands comma removed between digits
        (A + "3 + 4 = 8.", "7", False),  # wrong: last number is 8
        (A + "7 apples, then 9.", "7", False),  # only the LAST number counts
        (A + "The answer is 18.0", "18", False),  # string comparison: 18.0 != 18
        (A + "no number here", "7", False),  # malformed: no number at all
        ("<|assistant|>\n7\n<|assistant|>\nsix", "7", False),  # only the last assistant turn is read
        (A + "-3", "-3", False),  # upstream regex: the sign only binds to decimals, so "-3" reads as "3"
    ],
)
def test_gsm8k(output, truth, ok):
    assert v.verify_gsm8k(output, truth) is ok


@pytest.mark.parametrize(
    ("output", "truth", "ok"),
    [
        (A + "So $x = \\boxed{7}$.", "7", True),
        (A + "\\boxed{\\frac{1}{2}}", "0.5", True),  # equal values, different forms
        (A + "\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}", True),
        (A + "\\boxed{3}", "7", False),
        (A + "Final Answer: The final answer is 7. I hope it is correct.", "7", True),
        (A + "we get $5$ and then $7$", "7", True),  # text between the last two dollars
        (A + "\\boxed{7", "7", False),  # malformed: unbalanced brace, whole text is not 7
        (A + "the result is seven", "7", False),
    ],
)
def test_math(output, truth, ok):
    assert v.verify_math(output, truth) is ok


def test_math_equivalence_helpers():
    assert v.is_equiv("\\frac{6}{4}", "1.5")
    assert not v.is_equiv("x + 1", "2")  # outside the parsed subset: not equivalent, like a parse error
    assert v.hendrycks_is_equiv("\\left(3\\right)", "(3)")
    assert v.strip_string("0.5") == "\\frac{1}{2}"
    assert v.normalize_final_answer("x = 100,000 dollars") == "100000"
    assert v.last_boxed("a \\boxed{1} b \\boxed{{2}}") == "\\boxed{{2}}"


def _c(name, **kw):
    return json.dumps({"func_name": name, **kw})


@pytest.mark.parametrize(
    ("answer", "truth", "ok"),
    [
        ("all lower case here.", _c("validate_lowercase"), True),
        ("Not lower.", _c("validate_lowercase"), False),
        ("no commas at all", _c("validate_no_commas"), True),
        ("one, two", _c("validate_no_commas"), False),
        ("The cat sat.", _c("verify_keywords", keyword_list=["CAT", "sat"]), True),
        ("The dog sat.", _c("verify_keywords", keyword_list=["cat"]), False),
        ("a b c", _c("validate_word_constraint", N=3, quantifier="at most"), True),
        ("a b c d", _c("validate_word_constraint", N=3, quantifier="at most"), False),
        ("x\n* * *\ny", _c("verify_paragraph_count", N=2), True),
        ("x\n* * *\n", _c("verify_paragraph_count", N=2), False),  # empty paragraph
        ("* one\n- two", _c("verify_bullet_points", N=2), True),
        ("<<Joy>> text", _c("validate_title"), True),
        ("done. P.S. bye", _c("verify_postscript", postscript_marker="P.S."), True),
        ("done. P.S.", _c("verify_postscript", postscript_marker="P.S."), False),
        ("no placeholders", _c("validate_placeholders", N=3), True),  # upstream quirk: a tuple is truthy
        ('"quoted"', _c("validate_quotation"), True),
        ("end here", _c("validate_end", end_phrase="here", unused=None), True),  # None args dropped
        ("anything", json.dumps({"N": 1}), False),  # malformed: no func_name
    ],
)
def test_ifeval(answer, truth, ok):
    assert v.verify_ifeval(A + answer, truth) is ok


def test_routing_and_reward_values():
    outs = [A + "7", A + "\\boxed{7}", A + "lower", A + "7", A + "7"]
    truths = ["7", "7", _c("validate_lowercase"), None, "7"]
    sets = ["GSM8K", "MATH", "ifeval", "gsm8k", "unknown"]
    rewards, count = v.verifiable_rewards(outs, truths, sets)
    assert rewards == [10, 10, 10, 0, 0] and count == 3
    assert v.verifiable_rewards(outs[:1], truths[:1], sets[:1], verify_reward=0)[1] == 0
