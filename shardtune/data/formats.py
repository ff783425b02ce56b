"""The data formats: how a row is checked, which rows count as empty, and how it becomes text segments
that are trained on or masked.

alpaca      {instruction, input, output}: a prompt template, then the output (trained) and EOS.
chat        {messages: [{role, content}, ...]}: rendered with the chat template; assistant turns (with the
            template's end-of-turn) are trained, system and user turns are masked.
completion  {text}: plain text, all of it trained, then EOS.

Column mapping (data.columns) lets a dataset use its own field names for each of these.
"""
from typing import Dict, List, Optional, Tuple

from datasets import Dataset

from ..errors import DataError
from .sources import RawSplit

Segment = Tuple[str, bool]  # (text, trained on)

# Alpaca's two templates, shortened: with byte-level tokens every character of the template is a token
# of every example.
PROMPT_TEMPLATE = "Instruction: {instruction}\nInput: {input}\nResponse:\n"
PROMPT_TEMPLATE_NO_INPUT = "Instruction: {instruction}\nResponse:\n"

# For tokenizers without a chat template. EOS ends each assistant turn so the model learns to stop.
BUILTIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
ROLE_ALIASES = {"system": "system", "user": "user", "assistant": "assistant",
                "human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}


def format_prompt(instruction: str, input_text: str) -> str:
    template = PROMPT_TEMPLATE if input_text else PROMPT_TEMPLATE_NO_INPUT
    return template.format(instruction=instruction, input=input_text)


class Format:
    name: str
    mappable: Tuple[str, ...]  # the data.columns keys this format accepts
    appends_eos: bool = True  # False where the template ends turns itself
    adds_bos: bool = True  # prepend BOS where the tokenizer would (chat templates write their own)

    def normalize(self, raw: RawSplit, columns: Dict[str, str]) -> Dataset:
        """The rows in this format's own fields; DataError naming file:line and field for a bad row."""
        raise NotImplementedError

    def is_empty(self, row: dict) -> bool:
        raise NotImplementedError

    def segments(self, row: dict, chat_template: Optional[str], tokenizer) -> List[Segment]:
        raise NotImplementedError

    def generation_pair(self, row: dict, chat_template: Optional[str], tokenizer) -> Optional[Tuple[str, str]]:
        """(prompt, reference answer) for generation-based evaluation, or None where there is no answer."""
        return None


def _column(raw: RawSplit, columns: Dict[str, str], field: str, required: bool = True) -> Optional[list]:
    source = columns.get(field, field)
    if source in raw.rows.column_names:
        return raw.rows[source]
    if required:
        mapped = f" (data.columns.{field})" if field in columns else ""
        raise DataError(f"{raw.locate(0)}: missing required field '{source}'{mapped}; the rows have "
                        f"{raw.rows.column_names}")
    return None


def _field_error(raw: RawSplit, index: int, columns: Dict[str, str], field: str, problem: str) -> DataError:
    mapped = f" (data.columns.{field})" if field in columns else ""
    return DataError(f"{raw.locate(index)}: field '{columns.get(field, field)}'{mapped} {problem}")


def _strings(raw: RawSplit, columns: Dict[str, str], field: str, values: list, allow_missing: bool = False) -> list:
    out = []
    for index, value in enumerate(values):
        if value is None and allow_missing:
            value = ""
        if value is None:
            raise _field_error(raw, index, columns, field, "is missing")
        if not isinstance(value, str):
            raise _field_error(raw, index, columns, field, f"must be a string, got {type(value).__name__}")
        out.append(value)
    return out


class Alpaca(Format):
    name = "alpaca"
    mappable = ("instruction", "input", "output")

    def normalize(self, raw, columns):
        instruction = _strings(raw, columns, "instruction", _column(raw, columns, "instruction"))
        output = _strings(raw, columns, "output", _column(raw, columns, "output"))
        inputs = _column(raw, columns, "input", required=False) or [""] * len(output)
        return Dataset.from_dict({"instruction": instruction,
                                  "input": _strings(raw, columns, "input", inputs, allow_missing=True),
                                  "output": output})

    def is_empty(self, row):
        return not row["instruction"].strip() or not row["output"].strip()

    def segments(self, row, chat_template, tokenizer):
        return [(format_prompt(row["instruction"], row["input"]), False), (row["output"], True)]

    def generation_pair(self, row, chat_template, tokenizer):
        return format_prompt(row["instruction"], row["input"]), row["output"]


class Completion(Format):
    name = "completion"
    mappable = ("text",)

    def normalize(self, raw, columns):
        return Dataset.from_dict({"text": _strings(raw, columns, "text", _column(raw, columns, "text"))})

    def is_empty(self, row):
        return not row["text"].strip()

    def segments(self, row, chat_template, tokenizer):
        return [(row["text"], True)]


class Chat(Format):
    name = "chat"
    mappable = ("messages", "role", "content")
    appends_eos = False
    adds_bos = False

    def normalize(self, raw, columns):
        role_key, content_key = columns.get("role", "role"), columns.get("content", "content")
        conversations = []
        for index, messages in enumerate(_column(raw, columns, "messages")):
            if not isinstance(messages, list) or not messages:
                raise _field_error(raw, index, columns, "messages", "must be a non-empty list of {role, content}")
            turns = []
            for turn_number, message in enumerate(messages, start=1):
                if not isinstance(message, dict) or message.get(role_key) is None or message.get(content_key) is None:
                    raise _field_error(raw, index, columns, "messages",
                                       f"turn {turn_number} needs '{role_key}' and '{content_key}'")
                role, content = message[role_key], message[content_key]
                if role not in ROLE_ALIASES:
                    raise _field_error(raw, index, columns, "messages", f"turn {turn_number} has unknown role "
                                       f"{role!r}; expected one of {sorted(ROLE_ALIASES)}")
                if not isinstance(content, str):
                    raise _field_error(raw, index, columns, "messages",
                                       f"turn {turn_number}: content must be a string, got {type(content).__name__}")
                turns.append({"role": ROLE_ALIASES[role], "content": content})
            if not any(turn["role"] == "assistant" for turn in turns):
                raise _field_error(raw, index, columns, "messages", "has no assistant turn to train on")
            conversations.append(turns)
        return Dataset.from_dict({"messages": conversations})

    def is_empty(self, row):
        return not any(m["content"].strip() for m in row["messages"] if m["role"] == "assistant")

    @staticmethod
    def render(tokenizer, chat_template, messages, add_generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    def segments(self, row, chat_template, tokenizer):
        # Render growing prefixes of the conversation: what each assistant turn adds (its text and the
        # template's end-of-turn) is trained; what comes between (system and user turns, the assistant
        # header) is masked. This needs a template whose renderings of prefixes are prefixes.
        messages, segments, done = row["messages"], [], ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            header = self.render(tokenizer, chat_template, messages[:index], add_generation_prompt=True)
            with_turn = self.render(tokenizer, chat_template, messages[:index + 1])
            if not header.startswith(done) or not with_turn.startswith(header):
                raise DataError(f"data.chat_template: the chat template does not render a conversation "
                                f"turn by turn (turn {index + 1}); choose one that does")
            segments += [(header[len(done):], False), (with_turn[len(header):], True)]
            done = with_turn
        rest = self.render(tokenizer, chat_template, messages)[len(done):]
        return segments + ([(rest, False)] if rest else [])

    def generation_pair(self, row, chat_template, tokenizer):
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return self.render(tokenizer, chat_template, messages[:last], add_generation_prompt=True), \
            messages[last]["content"]


FORMATS = {fmt.name: fmt for fmt in (Alpaca(), Chat(), Completion())}


def chat_template_for(data_cfg, tokenizer) -> str:
    """The template chat rows are rendered with: data.chat_template, the tokenizer's, or the built-in one."""
    return data_cfg.chat_template or getattr(tokenizer, "chat_template", None) or BUILTIN_CHAT_TEMPLATE
