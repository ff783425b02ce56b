"""What every format turns a row into: segments of text (or an EOS token), each with the role it belongs to and
whether it is trained; and the training policy of data.train_on_roles / train_on_eos / mask_history that decides.

Also the base class of the formats and the BadRow a format raises for one malformed row (formats.normalize turns
it into an error naming the file and line, or skips the row under data.on_bad_row=skip).
"""
from dataclasses import dataclass, field
import logging
from typing import Callable, Dict, FrozenSet, List, NamedTuple, Optional, Tuple, Union

from datasets import Features

from ..errors import DataError

logger = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant", "tool")
EOS_POLICIES = ("turn", "last", "none")
ROW_ID = "source_row"
"""Column every normalized row carries: its index among its source's rows, so that an error found after
cleaning and splitting (say, when the chat template refuses the row) still names the file and line."""


class EosToken:
    """The tokenizer's EOS as a segment of its own: a token, not text to tokenize."""

    def __repr__(self) -> str:
        return "EOS"


EOS = EosToken()


class Segment(NamedTuple):
    text: Union[str, EosToken]
    trained: bool


class BadRow(DataError):
    """One row a format cannot use. `field` is the format's field name (data.columns key) the problem is in. Caught
    and located (file and line) by the pipeline; a DataError in case one ever escapes."""

    def __init__(self, field: Optional[str], problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


class BadRows:
    """The malformed rows of one source under data.on_bad_row: `error` stops at the first, naming its file and
    line; `skip` counts them and keeps the first few messages for the log."""
    NUM_SHOWN = 5

    def __init__(self, on_bad_row: str = "error", locate: Callable[[int], str] = lambda row_id: f"row {row_id + 1}"):
        self.on_bad_row, self.locate = on_bad_row, locate
        self.count, self.shown = 0, []

    def found(self, row_id: int, problem: str) -> None:
        if self.on_bad_row == "error":
            raise DataError(f"{self.locate(row_id)}: {problem} (data.on_bad_row=skip leaves such rows out)")
        self.count += 1
        if len(self.shown) < self.NUM_SHOWN:
            self.shown.append(f"{self.locate(row_id)}: {problem}")

    def log(self, where: str) -> None:
        if self.count:
            logger.warning("%s: skipped %d malformed row(s) (data.on_bad_row=skip); the first: %s", where,
                           self.count, "; ".join(self.shown))


@dataclass(frozen=True)
class TrainingPolicy:
    """Which turns of a row train: data.train_on_roles, train_on_eos and mask_history (None: the format decides).
    data.mask_prompt=false trains every token regardless; tokenization applies that."""
    train_on_roles: FrozenSet[str] = frozenset({"assistant"})
    train_on_eos: str = "turn"
    mask_history: Optional[bool] = None

    @classmethod
    def from_config(cls, data_cfg) -> "TrainingPolicy":
        return cls(frozenset(data_cfg.train_on_roles), data_cfg.train_on_eos, data_cfg.mask_history)

    def trained_turns(self, roles: List[str], flags: List[Optional[bool]], mask_history_default: bool) -> List[bool]:
        """Per turn: its own flag where it has one; else whether its role is trained, and with mask_history, whether
        it is not history. History: the turns before the last exchange (the last assistant turn and the prompt or
        tool result right before it), system turns aside; with the default roles only the last assistant turn
        trains."""
        mask_history = mask_history_default if self.mask_history is None else self.mask_history
        last = max((i for i, role in enumerate(roles) if role == "assistant"), default=len(roles))

        def is_history(index: int, role: str) -> bool:
            return role != "system" and (index < last - 1 or (index == last - 1 and role == "assistant"))

        return [flag if flag is not None else
                role in self.train_on_roles and not (mask_history and is_history(index, role))
                for index, (role, flag) in enumerate(zip(roles, flags))]

    def trained_ends(self, trained: List[bool]) -> List[bool]:
        """Per turn: whether its end (EOS or end-of-turn) trains: only after a trained turn, as train_on_eos says."""
        last_trained = max((i for i, is_trained in enumerate(trained) if is_trained), default=-1)
        return [is_trained and (self.train_on_eos == "turn" or (self.train_on_eos == "last" and i == last_trained))
                for i, is_trained in enumerate(trained)]


class Format:
    """A data format: the fields it reads, how a row is checked and normalized, and how it becomes segments."""
    name: str
    columns: Dict[str, str]  # data.columns key -> the field name used when the key is not set
    features: Features  # of the normalized rows (without ROW_ID); typed, so that splits concatenate
    required: Tuple[str, ...] = ()  # columns keys of the fields every dataset of this format must have
    nested: Tuple[str, ...] = ()  # columns keys of fields read inside a list field (role, content, ...)
    appends_eos: bool = True  # ends examples with the tokenizer's EOS (which it must then have)
    adds_bos: bool = True  # starts examples with BOS where the tokenizer would (chat templates write their own)

    def read_row(self, row: dict, names: Dict[str, str], system_prompt: Optional[str]) -> dict:
        """The row in this format's own fields (`names`: the dataset's name of each); BadRow where it is malformed."""
        raise NotImplementedError

    def ignored_inner_fields(self, row: dict, names: Dict[str, str]) -> List[str]:
        """Fields inside the row's lists that this format does not read, as 'list.field'."""
        return []

    def is_empty(self, row: dict) -> bool:
        raise NotImplementedError

    def segments(self, row: dict, context: "SegmentContext") -> List[Segment]:
        raise NotImplementedError

    def generation_pair(self, row: dict, context: "SegmentContext") -> Optional[Tuple[List[Segment], str]]:
        """(prompt segments, reference answer) for generation-based evaluation, or None where there is no answer."""
        return None

    def check_template(self, rows, context: "SegmentContext") -> None:
        """Warn where the template would drop what the rows hold (chat: tools)."""


@dataclass
class SegmentContext:
    """What turning a row into segments needs besides the row."""
    tokenizer: object
    chat_template: Optional[str]
    policy: TrainingPolicy
    memo: dict = field(default_factory=dict)  # what a format works out once per template (chat: end-of-turn text)


def merge_adjacent(segments: List[Segment]) -> List[Segment]:
    """Neighbouring text segments that are trained alike as one: tokenized together, as the text would be."""
    merged: List[Segment] = []
    for segment in segments:
        if merged and segment.trained == merged[-1].trained and EOS not in (segment.text, merged[-1].text):
            merged[-1] = Segment(merged[-1].text + segment.text, segment.trained)
        elif segment.text != "":
            merged.append(segment)
    return merged


def as_flag(value) -> Optional[bool]:
    """A train flag: true/false (or 1/0); None where it is not set; BadRow-worthy values give ValueError."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be true or false, got {value!r}")
