"""-m comment: a text attached to the rule; always matches (libxt_comment)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState, save_string

MAX_COMMENT_LEN = 256  # XT_MAX_COMMENT_LEN, including the NUL: 255 bytes kept


@dataclass(frozen=True)
class CommentData:
    text: str


class CommentMatch(XtOptionsExtension, MatchExtension):
    name = "comment"
    help_text = (
        "comment match options:\n"
        "--comment COMMENT             Attach a comment to a rule\n")
    # XTOPT_PUT into a 256-byte buffer: longer comments are cut, not refused
    xt_options = (XtOption("comment", T.STRING, mand=True, size=MAX_COMMENT_LEN),)

    def build(self, state: XtState, ctx: ParseContext) -> CommentData:
        return CommentData(state.values["comment"])

    def save(self, d: CommentData) -> str:
        return " --comment" + save_string(d.text)

    def print(self, d: CommentData, numeric: bool) -> str:
        return f" /* {d.text} */"

    def matches(self, d: CommentData, pkt: Any) -> bool:
        return True

    def lower(self, d: CommentData, rule: Any) -> list[Any]:
        return []  # xt_comment matches every packet: no constraint


EXTENSIONS = [CommentMatch()]
