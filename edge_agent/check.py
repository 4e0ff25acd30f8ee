"""One item of the field agent's checklist (`diagnose`): pass / warn / fail, what was measured,
and a fix hint, in Chinese and English."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CheckStatus = Literal["pass", "warn", "fail"]
Lang = Literal["zh", "en"]


@dataclass(frozen=True, slots=True)
class Check:
    key: str
    status: CheckStatus
    detail_zh: str
    detail_en: str
    hint_zh: str = ""
    hint_en: str = ""

    def detail(self, lang: Lang) -> str:
        return self.detail_zh if lang == "zh" else self.detail_en

    def hint(self, lang: Lang) -> str:
        return self.hint_zh if lang == "zh" else self.hint_en
