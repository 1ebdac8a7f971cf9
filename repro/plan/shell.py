"""Read a published shell block the way bash would, keeping the line every word came from.

The linter needs bash's meaning, not the author's intent: a blank after a line-continuation
backslash ends the command, `\\ #` starts a comment, `8\\` + newline + `--x` glues into `8--x`.
This is a deliberately small subset of bash (quotes, escapes, continuations, comments, `;` `&&`
`||` `|` separators, NAME=value and export assignments, $NAME/${NAME} expansion) that is enough
for training commands; anything else ($(...), globs, ~) is kept literally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
SEPARATORS = (";", "&&", "||", "|", "&")


@dataclass
class Word:
    text: str
    line: int  # line (in the seed file) where the word starts
    unresolved: tuple[str, ...] = ()  # $NAMEs that had no value


@dataclass
class SimpleCommand:
    words: list[Word]
    line: int
    assignments: dict[str, str] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [w.text for w in self.words]


@dataclass
class Script:
    commands: list[SimpleCommand]
    variables: dict[str, str]  # values after running every assignment in order
    assigned_at: dict[str, int]  # NAME -> line of its (last) assignment


class _Lexer:
    """Turns text into (word-pieces, separators, newlines) with bash quoting rules."""

    def __init__(self, text: str, first_line: int, variables: dict[str, str]):
        self.s, self.i, self.line = text, 0, first_line
        self.vars = variables

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def advance(self) -> str:
        ch = self.s[self.i]
        self.i += 1
        if ch == "\n":
            self.line += 1
        return ch

    def tokens(self):
        """Yield ('word', Word list), ('sep', str, line) or ('nl', line)."""
        while self.i < len(self.s):
            ch = self.peek()
            if ch == "\\" and self.peek(1) == "\n":  # continuation: both characters vanish
                self.advance(), self.advance()
                continue
            if ch in " \t":
                self.advance()
                continue
            if ch == "\n":
                yield ("nl", self.line)
                self.advance()
                continue
            if ch == "#":  # a comment only where a word could start
                while self.i < len(self.s) and self.peek() != "\n":
                    self.advance()
                continue
            two = ch + self.peek(1)
            if two in ("&&", "||"):
                yield ("sep", two, self.line)
                self.advance(), self.advance()
                continue
            if ch in ";|&":
                yield ("sep", ch, self.line)
                self.advance()
                continue
            yield ("word", self.word())

    def word(self) -> list[Word]:
        """One shell word; unquoted expansions split into several words."""
        start = self.line
        parts: list[str] = [""]  # unquoted expansion may split the word
        unresolved: list[str] = []
        while self.i < len(self.s):
            ch = self.peek()
            if ch in " \t\n;|&":
                break
            if ch == "\\":
                if self.peek(1) == "\n":
                    self.advance(), self.advance()
                    continue
                self.advance()
                parts[-1] += self.advance() if self.i < len(self.s) else ""
            elif ch == "'":
                self.advance()
                while self.i < len(self.s) and self.peek() != "'":
                    parts[-1] += self.advance()
                self.i += 1 if self.i < len(self.s) else 0
            elif ch == '"':
                self.advance()
                while self.i < len(self.s) and self.peek() != '"':
                    c = self.advance()
                    if c == "\\" and self.peek() in ('"', "\\", "$", "`", "\n"):
                        nxt = self.advance()
                        parts[-1] += "" if nxt == "\n" else nxt
                    elif c == "$":
                        value, name = self.expansion()
                        parts[-1] += value
                        unresolved += [name] if name else []
                    else:
                        parts[-1] += c
                self.i += 1 if self.i < len(self.s) else 0
            elif ch == "$":
                self.advance()
                value, name = self.expansion()
                if name:
                    unresolved.append(name)
                    parts[-1] += value
                else:  # unquoted expansion: word splitting
                    pieces = value.split()
                    if value[:1].isspace() and parts[-1]:
                        parts.append("")
                    for k, piece in enumerate(pieces):
                        if k:
                            parts.append("")
                        parts[-1] += piece
                    if value[-1:].isspace() and pieces:
                        parts.append("")
            else:
                parts[-1] += self.advance()
        parts = [p for p in parts if p != ""] or [""]
        return [Word(p, start, tuple(unresolved)) for p in parts]

    def expansion(self) -> tuple[str, str | None]:
        """After a '$': (value, None) when known, (literal text, NAME) when not; $(...) stays literal."""
        if self.peek() == "(":
            depth, text = 0, "$"
            while self.i < len(self.s):
                c = self.advance()
                text += c
                depth += c == "("
                depth -= c == ")"
                if depth == 0:
                    break
            return text, "$(...)"
        braced = self.peek() == "{"
        if braced:
            self.advance()
        m = _NAME.match(self.s, self.i)
        if not m:
            return "$" + ("{" if braced else ""), None
        name = m.group(0)
        self.i = m.end()
        if braced and self.peek() == "}":
            self.advance()
        if name in self.vars:
            return self.vars[name], None
        return ("${%s}" % name) if braced else f"${name}", name


def parse(text: str, first_line: int = 1, variables: dict[str, str] | None = None) -> Script:
    """Run the block's assignments and split it into simple commands, as bash would."""
    env = dict(variables or {})
    assigned_at: dict[str, int] = {}
    commands: list[SimpleCommand] = []
    current: list[Word] = []
    lexer = _Lexer(text, first_line, env)

    def finish() -> None:
        if not current:
            return
        words = list(current)
        current.clear()
        assignments: dict[str, str] = {}
        if words[0].text == "export":
            words = words[1:]
        while words and (m := _ASSIGN.match(words[0].text)):
            assignments[m.group(1)] = m.group(2)
            assigned_at[m.group(1)] = words[0].line
            words = words[1:]
        if not words:  # a pure assignment changes the shell's variables
            env.update(assignments)
        line = words[0].line if words else min(assigned_at[name] for name in assignments)
        commands.append(SimpleCommand(words, line, assignments))

    for tok in lexer.tokens():
        if tok[0] == "word":
            current.extend(tok[1])
        else:
            finish()
    finish()
    return Script([c for c in commands if c.words or c.assignments], env, assigned_at)
