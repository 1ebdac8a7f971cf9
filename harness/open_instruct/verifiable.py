"""Verifiable rewards of open-instruct @30d11b4 (``model_utils.apply_verifiable_reward``,
``ground_truth_utils``, ``math_utils``, ``if_functions``), re-implemented rule for rule.

* routing by ``dataset.lower()``: ``gsm8k``, ``math``, ``ifeval``; anything else (or a None ground truth)
  gets 0.  A verified response earns ``verify_reward`` (10), added to the (multiplied) RM score.
* every checker first keeps only the text after the last ``<|assistant|>\\n`` and strips it.
* gsm8k: drop thousands commas between digits, take the last number matching
  ``[-+]?\\d*\\.\\d+|\\d+`` (the whole text when there is none) and compare it, lower-cased, as a STRING
  with the ground truth: "18.0" is not "18".
* math: candidates are the last ``\\boxed{}`` content, the Minerva "Final Answer: The final answer is X.
  I hope it is correct." answer (normalised), else the text between the last two ``$``, else the whole
  normalised output; any candidate equal by ``is_equiv`` or ``hendrycks_is_equiv`` counts.
* ifeval: the ground truth is a JSON dict with ``func_name``; None-valued arguments are dropped; the
  function's return value is used as a truth value, so ``validate_placeholders`` (which returns a
  non-empty tuple) always verifies - upstream's quirk, kept.

DEVIATION (math ``is_equiv``): upstream parses both sides with ``sympy.parsing.latex.parse_latex``, which
needs the antlr4 runtime (not installed in the twin environment; upstream raises ImportError then).  The
twin parses the LaTeX subset its data uses (numbers, ``\\frac``/``\\dfrac``/``\\tfrac``, ``\\sqrt``, + - * /
^, parentheses, ``\\cdot``/``\\times``) with a small parser into exact sympy numbers, never ``eval``;
anything else counts as "could not parse" -> not equivalent, as upstream does for a parse error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

ASSISTANT_TAG = "<|assistant|>\n"
VERIFY_REWARD = 10
INVALID_ANSWER = "[invalidanswer]"


def final_turn(text: str) -> str:
    return text.split(ASSISTANT_TAG)[-1].strip()


# ---------------------------------------------------------------------------------------------- gsm8k

_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def gsm8k_prediction(output: str) -> str:
    text = re.sub(r"(\d),(\d)", r"\1\2", final_turn(output))
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else text


def verify_gsm8k(output: str, ground_truth: str) -> bool:
    return str(gsm8k_prediction(output)).lower() == str(ground_truth).lower()


# ----------------------------------------------------------------------------------------------- math


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (balanced braces) or ``\\boxed x`` / ``\\fbox{...}`` span, or None."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def unbox(span: str) -> str | None:
    """Content of a boxed span, or None where upstream's assertion would fail (e.g. ``\\fbox``)."""
    if "\\boxed " in span:
        return span[len("\\boxed ") :] if span.startswith("\\boxed ") else None
    if span.startswith("\\boxed{") and span.endswith("}"):
        return span[len("\\boxed{") : -1]
    return None


def minerva_answer(text: str) -> str:
    match = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.",
                      text + "I hope it is correct.")
    return match.group(1).strip() if match else INVALID_ANSWER


_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""),
                  ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
            "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
            "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
            "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}",
            r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]


def normalize_final_answer(answer: str) -> str:
    """Minerva's normalisation (Lewkowycz et al. 2022, appendix D) in upstream's order."""
    answer = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _REMOVED:
        answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for macro in ("text", "textbf", "overline"):
        answer = re.sub(r"(\\" + macro + r"\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


class _LatexParser:
    """Recursive descent over the twin's LaTeX subset, producing exact sympy values."""

    _TOKEN = re.compile(r"\s*(\\[a-zA-Z]+|\d+\.\d*|\.\d+|\d+|[-+*/^(){}])")

    def __init__(self, text: str):
        self.tokens, pos = [], 0
        text = text.strip()
        while pos < len(text):
            m = self._TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"unexpected {text[pos:]!r}")
            self.tokens.append(m.group(1))
            pos = m.end()
        self.i = 0

    def parse(self):
        if not self.tokens:
            raise ValueError("empty")
        value = self.expr()
        if self.i != len(self.tokens):
            raise ValueError("trailing input")
        return value

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected=None):
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"expected {expected!r}, got {tok!r}")
        self.i += 1
        return tok

    def expr(self):
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self):
        value = self.unary()
        while self.peek() in ("*", "/", "\\cdot", "\\times", "\\div"):
            op = self.take()
            rhs = self.unary()
            value = value / rhs if op in ("/", "\\div") else value * rhs
        return value

    def unary(self):
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() == "^":
            self.take()
            return base ** self.unary()
        return base

    def group(self):
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def atom(self):
        import sympy

        tok = self.take()
        if tok in ("\\frac", "\\dfrac", "\\tfrac"):
            num = self.group()
            return num / self.group()
        if tok == "\\sqrt":
            return sympy.sqrt(self.group())
        if tok == "\\pi":
            return sympy.pi
        if tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
            return value
        if re.fullmatch(r"\d+\.\d*|\.\d+|\d+", tok):
            return sympy.Rational(tok)
        raise ValueError(f"unsupported token {tok!r}")


def is_equiv(a: str, b: str) -> bool:
    """Symbolic equality of two normalised answers (see the module's DEVIATION note)."""
    import sympy

    try:
        diff = _LatexParser(a).parse() - _LatexParser(b).parse()
        return sympy.simplify(diff) == 0
    except (ValueError, ZeroDivisionError, TypeError):
        return False


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if sub[:1] == "{":
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b, rest = sub[0], sub[1], sub[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = int(parts[0]), int(parts[1])  # ValueError propagates: hendrycks_is_equiv then compares raw strings
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\sqrt" + sub if sub[:1] == "{" else "\\sqrt{" + sub[:1] + "}" + sub[1:]
    return out


def strip_string(s: str) -> str:
    """Hendrycks MATH answer canonicalisation, in upstream's order."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:
        pieces = s.split("\\text{ ")
        if len(pieces) != 2:
            raise ValueError("ambiguous units")  # upstream's assertion; hendrycks_is_equiv falls back
        s = pieces[0]
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        s = halves[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def hendrycks_is_equiv(a: str | None, b: str | None) -> bool:
    if a is None and b is None:
        return True
    if a is None or b is None:
        return False
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # noqa: BLE001 - upstream compares the raw strings on any failure
        return a == b


def math_candidates(output: str) -> list[str]:
    raw = final_turn(output)
    candidates = []
    boxed = last_boxed(raw)
    if boxed is not None:
        content = unbox(boxed)
        if content is not None:
            candidates.append(content)
    minerva = normalize_final_answer(minerva_answer(raw))
    if minerva != INVALID_ANSWER:
        candidates.append(minerva)
    if not candidates:
        dollars = [m.start() for m in re.finditer(r"\$", raw)]
        if len(dollars) > 1:
            candidates.append(normalize_final_answer(raw[dollars[-2] + 1 : dollars[-1]]))
    if not candidates:
        candidates.append(normalize_final_answer(raw))
    return candidates


def verify_math(output: str, ground_truth: str) -> bool:
    return any(is_equiv(c, ground_truth) or hendrycks_is_equiv(c, ground_truth) for c in math_candidates(output))


# --------------------------------------------------------------------------------------------- ifeval


def _keywords(text, keyword_list):
    low = text.lower()
    return all(k.lower() in low for k in keyword_list)


def _keyword_frequency(text, word, N):
    return sum(1 for w in re.findall(r"\b\w+\b", text.lower()) if w == word.lower()) == N


def _forbidden_words(text, forbidden_words):
    low = text.lower()
    return not any(w.lower() in low for w in forbidden_words)


def _letter_frequency(text, letter, N):
    if len(letter) != 1:
        raise ValueError("Letter parameter must be a single character")
    return text.count(letter) == N


def _response_language(text, language):
    from langdetect import detect  # upstream imports it here too; absent -> ImportError, as upstream

    return detect(text) == language


def _paragraph_count(text, N):
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = cleaned.split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


def _quantified(actual, N, quantifier, around):
    if quantifier == "at least":
        return actual >= N
    if quantifier == "at most":
        return actual <= N
    if quantifier == "around":
        return around(actual)
    return False


def _word_constraint(text, N, quantifier):
    n = len(text.strip().split())
    return _quantified(n, N, quantifier, lambda a: abs(a - N) <= max(round(N * 0.1), 1))


def _sentence_constraint(text, N, quantifier):
    n = len(re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s", text))
    return _quantified(n, N, quantifier, lambda a: abs(a - N) <= 1)


def _paragraphs(text, N, first_word, i):
    parts = text.split("\n\n")
    return len(parts) == N and parts[i - 1].strip().startswith(first_word)


def _postscript(text, postscript_marker):
    if postscript_marker not in text:
        return False
    return len(text[text.find(postscript_marker) :].strip()) > len(postscript_marker)


def _placeholders(text, N):
    found = re.findall(r"\[(.*?)\]", text)
    return len(found) >= N, found  # a tuple: always truthy for the reward (upstream quirk)


def _bullet_points(text, N):
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


def _title(text):
    return bool(re.findall(r"<<(.*?)>>", text))


def _choice(text, options):
    return any(text in option for option in options)


def _highlighted(text, N):
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def _sections(text, N, section_splitter):
    parts = text.split(section_splitter)
    if parts[0] == "":
        parts.pop(0)
    return len(parts) == N


def _json_format(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _repeat_prompt(text, original_prompt):
    return text.startswith(original_prompt)


def _two_responses(text):
    if text.count("******") != 1:
        return False
    first, second = (p.strip() for p in text.split("******"))
    return first != second


def _capital_words(text, N, quantifier):
    n = len(re.findall(r"\b[A-Z]+\b", text))
    return _quantified(n, N, quantifier, lambda a: a == N)


IF_FUNCTIONS: dict[str, Callable] = {
    "verify_keywords": _keywords,
    "verify_keyword_frequency": _keyword_frequency,
    "validate_forbidden_words": _forbidden_words,
    "verify_letter_frequency": _letter_frequency,
    "validate_response_language": _response_language,
    "verify_paragraph_count": _paragraph_count,
    "validate_word_constraint": _word_constraint,
    "verify_sentence_constraint": _sentence_constraint,
    "validate_paragraphs": _paragraphs,
    "verify_postscript": _postscript,
    "validate_placeholders": _placeholders,
    "verify_bullet_points": _bullet_points,
    "validate_title": _title,
    "validate_choice": _choice,
    "validate_highlighted_sections": _highlighted,
    "validate_sections": _sections,
    "validate_json_format": _json_format,
    "validate_repeat_prompt": _repeat_prompt,
    "validate_two_responses": _two_responses,
    "validate_uppercase": lambda text: text == text.upper(),
    "validate_lowercase": lambda text: text == text.lower(),
    "validate_frequency_capital_words": _capital_words,
    "validate_end": lambda text, end_phrase: text.endswith(end_phrase),
    "validate_quotation": lambda text: text.startswith('"') and text.endswith('"'),
    "validate_no_commas": lambda text: "," not in text,
}


def verify_ifeval(output: str, constraint) -> bool:
    """Upstream returns the function's value; a missing ``func_name`` is a warning and False."""
    answer = final_turn(output)
    spec = json.loads(constraint) if isinstance(constraint, str) else dict(constraint)
    if "func_name" not in spec:
        return False
    func = IF_FUNCTIONS[spec.pop("func_name")]
    if not spec:
        return bool(func(answer))
    return bool(func(answer, **{k: v for k, v in spec.items() if v is not None}))


def verify(output: str, ground_truth, dataset: str) -> bool:
    if ground_truth is None:
        return False
    kind = dataset.lower()
    if kind == "gsm8k":
        return verify_gsm8k(output, ground_truth)
    if kind == "math":
        return verify_math(output, ground_truth)
    if kind == "ifeval":
        return verify_ifeval(output, ground_truth)
    return False


def verifiable_rewards(decoded: Sequence[str], ground_truths: Sequence, datasets: Sequence[str],
                       verify_reward: float = VERIFY_REWARD) -> tuple[list[float], int]:
    """(reward per response, number verified) - the list ``apply_verifiable_reward`` builds."""
    rewards = [verify_reward if verify(o, g, d) else 0 for o, g, d in zip(decoded, ground_truths, datasets)]
    return rewards, sum(1 for r in rewards if r > 0)
