"""The chat format: conversations in OpenAI or ShareGPT style, rendered with a chat template turn by turn so that
each turn's tokens are trained or masked on their own.

A row: {messages: [{role, content, tool_calls?, tool_call_id?, name?, train?}, ...], system?, tools?}. ShareGPT's
role tags are mapped (human -> user, gpt -> assistant, function_call -> an assistant tool call, observation ->
tool); a top-level `system` becomes the first turn; `tools` (a list, or a JSON string) and each assistant turn's
`tool_calls` are passed to the template as transformers expects them.
"""
import json
import logging
from typing import List

from datasets import Features, List as ListOf, Value
from jinja2 import TemplateError

from .segments import BadRow, Format, Segment, as_flag

logger = logging.getLogger(__name__)

# For tokenizers without a chat template. EOS ends each assistant turn so the model learns to stop; tools are
# listed first, a tool call is its function as JSON after a <|tool_call|> tag, a tool's result is a `tool` turn.
BUILTIN_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|tools|>\\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}{% endif %}"
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}{{ '<|tool_call|>' + call['function'] | tojson }}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
ROLE_TAGS = {"system": "system", "developer": "system",
             "user": "user", "human": "user",
             "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
             "function_call": "assistant",  # ShareGPT: the assistant calling a tool (its value is the call)
             "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool"}
PASSED_THROUGH = ("tool_call_id", "name")  # OpenAI's fields of a tool turn, given to the template as they are
PROBE = "shardtune-probe"  # content of the probe turns that find a template's end-of-turn text


def drop_nulls(value):
    """`value` without null dict entries: arrow fills every key any row has into every row's dicts."""
    if isinstance(value, dict):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value


def parse_json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"is not valid JSON ({error.msg})") from None
    return drop_nulls(value)


def read_tools(value) -> list:
    """Tools as transformers takes them: [{type: function, function: {name, description, parameters}}]."""
    tools = parse_json(value) if value not in (None, "") else []
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list):
        raise ValueError("must be a list of tools (or a JSON string of one)")
    out = []
    for number, tool in enumerate(tools, start=1):
        if isinstance(tool, dict) and "function" in tool:
            out.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": tool})  # a bare function schema, as LLaMA-Factory stores it
        else:
            raise ValueError(f"tool {number} needs a name (a function schema, or {{type: function, function: ...}})")
    return out


def read_tool_calls(value) -> list:
    """Calls as transformers takes them: [{type: function, function: {name, arguments: {...}}, id?}]."""
    calls = parse_json(value)
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list):
        raise ValueError("must be a list of {function: {name, arguments}}")
    out = []
    for number, call in enumerate(calls, start=1):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tool call {number} needs a function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI sends the arguments as a JSON string; templates expect a dict
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        normalized = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if call.get("id"):
            normalized["id"] = call["id"]
        out.append(normalized)
    return out


def check_turn_order(roles: List[str]) -> None:
    """System turns first, then a user turn; a tool's result follows the assistant turn that called it."""
    started = next((i for i, role in enumerate(roles) if role != "system"), None)
    if started is None:
        raise BadRow("messages", "has no assistant turn to train on")
    if roles[started] != "user":
        article = "an" if roles[started][0] in "aeiou" else "a"
        raise BadRow("messages", f"starts with {article} {roles[started]} turn (turn {started + 1}); a conversation "
                                 "starts with a user turn, after any system turns")
    for number, (before, role) in enumerate(zip(roles[started:], roles[started + 1:]), start=started + 2):
        if role == "system":
            raise BadRow("messages", f"turn {number} is a system turn after the conversation began; system turns "
                                     "come first")
        if role == "tool" and before not in ("assistant", "tool"):
            raise BadRow("messages", f"turn {number} is a tool result after a {before} turn; it must follow the "
                                     "assistant turn that called the tool")


class Chat(Format):
    name = "chat"
    columns = {"messages": "messages", "role": "role", "content": "content", "tool_calls": "tool_calls",
               "train": "train", "system": "system", "tools": "tools"}
    nested = ("role", "content", "tool_calls", "train")
    required = ("messages",)
    features = Features({"messages": ListOf({"role": Value("string"), "content": Value("string"),
                                             "tool_calls": Value("string"), "tool_call_id": Value("string"),
                                             "name": Value("string"), "train": Value("bool")}),
                         "tools": Value("string")})
    appends_eos = False
    adds_bos = False

    def read_row(self, row, names, system_prompt):
        messages = row.get(names["messages"])
        if not isinstance(messages, list) or not messages:
            raise BadRow("messages", f"must be a non-empty list of {{{names['role']}, {names['content']}}}")
        turns = [self.read_turn(message, number, names) for number, message in enumerate(messages, start=1)]
        system = row.get(names["system"])
        if system is not None and not isinstance(system, str):
            raise BadRow("system", f"must be a string, got {type(system).__name__}")
        if system and turns[0]["role"] == "system" and turns[0]["content"] != system:
            raise BadRow("system", "differs from the conversation's own system turn")
        system = system or system_prompt
        if system and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": system, "tool_calls": "", "tool_call_id": "", "name": "",
                             "train": None})
        roles = [turn["role"] for turn in turns]
        check_turn_order(roles)
        if "assistant" not in roles:
            raise BadRow("messages", "has no assistant turn to train on")
        try:
            tools = read_tools(row.get(names["tools"]))
        except ValueError as error:
            raise BadRow("tools", str(error)) from None
        return {"messages": turns, "tools": json.dumps(tools) if tools else ""}

    @staticmethod
    def read_turn(message, number: int, names) -> dict:
        role_key, content_key, calls_key, train_key = (names[key] for key in ("role", "content", "tool_calls", "train"))
        if not isinstance(message, dict) or message.get(role_key) is None or \
                (message.get(content_key) is None and not message.get(calls_key)):
            raise BadRow("messages", f"turn {number} needs '{role_key}' and '{content_key}'")
        tag, content = message[role_key], message.get(content_key) or ""
        if tag not in ROLE_TAGS:
            raise BadRow("messages", f"turn {number} has unknown role {tag!r}; expected one of {sorted(ROLE_TAGS)}")
        if not isinstance(content, str):
            raise BadRow("messages", f"turn {number}: content must be a string, got {type(content).__name__}")
        calls = []
        try:
            if message.get(calls_key):
                calls = read_tool_calls(message[calls_key])
            elif tag == "function_call":  # ShareGPT: the value is the call, as JSON; text where it is not one
                try:
                    calls, content = read_tool_calls(content), ""
                except ValueError:
                    pass
        except ValueError as error:
            raise BadRow("messages", f"turn {number}: '{calls_key}' {error}") from None
        role = ROLE_TAGS[tag]
        if calls and role != "assistant":
            raise BadRow("messages", f"turn {number}: only assistant turns call tools, not {tag!r} ones")
        try:
            train = as_flag(message.get(train_key))
        except ValueError as error:
            raise BadRow("messages", f"turn {number}: '{train_key}' {error}") from None
        passed = {}
        for key in PASSED_THROUGH:
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                raise BadRow("messages", f"turn {number}: '{key}' must be a string, got {type(value).__name__}")
            passed[key] = value or ""
        return {"role": role, "content": content, "tool_calls": json.dumps(calls) if calls else "", **passed,
                "train": train}

    def ignored_inner_fields(self, row, names):
        known = {names[key] for key in self.nested} | set(PASSED_THROUGH)
        messages = [message for message in row.get(names["messages"]) or [] if isinstance(message, dict)]
        return [f"{names['messages']}.{key}" for message in messages for key, value in message.items()
                if key not in known and value is not None]

    def is_empty(self, row):
        return not any(m["content"].strip() or m["tool_calls"] for m in row["messages"] if m["role"] == "assistant")

    def segments(self, row, context):
        return ChatRenderer(row, context).segments()

    def generation_pair(self, row, context):
        renderer = ChatRenderer(row, context)
        last = max(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
        prompt = renderer.render(renderer.messages[:last], add_generation_prompt=True)
        return [Segment(prompt, False)], row["messages"][last]["content"]

    def check_template(self, rows, context) -> None:
        """Warn where the template drops what the rows hold, judged on the first row with tools and the first with
        tool calls."""
        with_tools = with_calls = None
        for batch in rows.iter(batch_size=1000):
            for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
                with_tools = with_tools or (row if row["tools"] else None)
                with_calls = with_calls or (row if any(m["tool_calls"] for m in row["messages"]) else None)
            if with_tools and with_calls:
                break
        try:  # a row the template refuses is reported when it is tokenized
            if with_tools:
                renderer = ChatRenderer(with_tools, context)
                if renderer.render(renderer.messages) == renderer.render(renderer.messages, tools=False):
                    logger.warning("the chat template ignores the rows' `tools`: the model will not see them; set "
                                   "data.chat_template to one that renders tools")
            if with_calls:
                renderer = ChatRenderer(with_calls, context)
                first_call = next(json.loads(m["tool_calls"]) for m in with_calls["messages"] if m["tool_calls"])[0]
                if first_call["function"]["name"] not in renderer.render(renderer.messages):
                    logger.warning("the chat template does not render the assistant turns' `tool_calls`; set "
                                   "data.chat_template to one that does")
        except BadRow:
            pass


class ChatRenderer:
    """One conversation through the chat template, turn by turn: what each turn adds to the rendering is its
    header (masked), its body and its end of turn (each trained or not). This needs a template whose renderings
    of a conversation's beginnings are beginnings of its rendering, as chat templates are."""

    def __init__(self, row: dict, context):
        self.context = context
        self.messages = [self.template_message(m) for m in row["messages"]]
        self.tools = json.loads(row["tools"]) if row["tools"] else None
        self.roles = [m["role"] for m in row["messages"]]
        self.trained = context.policy.trained_turns(self.roles, [m["train"] for m in row["messages"]],
                                                    mask_history_default=False)
        self.ends = context.policy.trained_ends(self.trained)

    @staticmethod
    def template_message(message: dict) -> dict:
        out = {"role": message["role"], "content": message["content"]}
        if message["tool_calls"]:
            out["tool_calls"] = json.loads(message["tool_calls"])
        out.update({key: message[key] for key in PASSED_THROUGH if message[key]})
        return out

    def render(self, messages, add_generation_prompt: bool = False, tools: bool = True) -> str:
        try:
            return self.context.tokenizer.apply_chat_template(
                messages, tools=self.tools if tools else None, chat_template=self.context.chat_template,
                tokenize=False, add_generation_prompt=add_generation_prompt)
        except TemplateError as error:
            raise BadRow(None, f"the chat template refuses this conversation: {error}") from None

    def end_of_turn(self, role: str) -> str:
        """The text the template writes after a `role` turn's content (its end-of-turn), found once per role by
        rendering a probe turn; '' where the probe finds none."""
        memo = self.context.memo.setdefault("end_of_turn", {})
        if role not in memo:
            before = {"system": [], "user": [], "assistant": [{"role": "user", "content": "u"}],
                      "tool": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [
                          {"type": "function", "function": {"name": "f", "arguments": {}}}]}]}[role]
            try:
                text = self.context.tokenizer.apply_chat_template(
                    before + [{"role": role, "content": PROBE}], chat_template=self.context.chat_template,
                    tokenize=False)
                memo[role] = text[text.rindex(PROBE) + len(PROBE):]
            except (TemplateError, ValueError):
                memo[role] = ""
        return memo[role]

    def segments(self) -> List[Segment]:
        segments, done = [], ""  # done: the rendering of the turns so far
        for index, message in enumerate(self.messages):
            with_turn = self.render(self.messages[:index + 1])
            if message["role"] == "assistant":  # the header is what the generation prompt writes
                header = self.render(self.messages[:index], add_generation_prompt=True)
            else:  # the header ends where the content starts
                added = with_turn[len(done):]
                start = added.find(message["content"]) if message["content"].strip() else -1
                header = done + added[:max(start, 0)]
            if not header.startswith(done) or not with_turn.startswith(header):
                raise BadRow(None, f"data.chat_template: the chat template does not render a conversation turn by "
                                   f"turn (turn {index + 1}); choose one that does")
            turn = with_turn[len(header):]
            end = self.end_of_turn(message["role"])
            if not end or not turn.endswith(end):
                end = ""
            segments += [Segment(header[len(done):], False), Segment(turn[:len(turn) - len(end)], self.trained[index]),
                         Segment(end, self.ends[index])]
            done = with_turn
        return [segment for segment in segments if segment.text]
