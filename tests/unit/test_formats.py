"""The formats users of LLaMA-Factory and axolotl bring (shardtune/data/formats.py, chat.py, segments.py): alpaca
with system and history, ShareGPT / OpenAI chat with system, tools and tool calls, per-turn training control,
template-free segments, data.columns set both ways, and the fields a format does not read reported."""
import copy
import json
import logging

import pytest

from conftest import compose_cfg
from data_helpers import data_cfg, write_jsonl
from shardtune.config import ColumnsConfig, asset_path
from shardtune.data import build
from shardtune.data.cache import cache_key
from shardtune.data.chat import BUILTIN_CHAT_TEMPLATE
from shardtune.data.pipeline import format_report
from shardtune.data.tokenize import IGNORE_INDEX


def spans(tokenizer, row):
    """The example as [(text, trained)], token by token joined into runs: what is trained and what is masked."""
    runs = []
    for token, label in zip(row["input_ids"], row["labels"]):
        trained = label != IGNORE_INDEX
        assert not trained or label == token  # a trained token predicts itself
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in runs]


def trained_parts(tokenizer, row):
    return [text for text, trained in spans(tokenizer, row) if trained]


# alpaca: system and history.

ALPACA_HISTORY = {"instruction": "And times 3?", "input": "", "output": "12", "system": "You are a calculator.",
                  "history": [["What is 2+2?", "4"], ["Add 5.", "9"]]}


def test_alpaca_history_is_context_by_default_and_each_turn_ends_with_eos(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_HISTORY])
    row = build(data_cfg(path), tokenizer, 256, 0).train[0]
    assert spans(tokenizer, row) == [
        ("System: You are a calculator.\nInstruction: What is 2+2?\nResponse:\n4</s>Instruction: Add 5.\nResponse:\n"
         "9</s>Instruction: And times 3?\nResponse:\n", False), ("12</s>", True)]
    assert row["input_ids"].count(tokenizer.eos_token_id) == 3  # one EOS token after each response
    every_turn = build(data_cfg(path, mask_history=False), tokenizer, 256, 0).train[0]
    assert every_turn["input_ids"] == row["input_ids"]
    assert trained_parts(tokenizer, every_turn) == ["4</s>", "9</s>", "12</s>"]


@pytest.mark.parametrize("policy, trained", [("turn", ["4</s>", "9</s>", "12</s>"]), ("last", ["4", "9", "12</s>"]),
                                             ("none", ["4", "9", "12"])])
def test_train_on_eos(tmp_path, tokenizer, policy, trained):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_HISTORY])
    row = build(data_cfg(path, mask_history=False, train_on_eos=policy), tokenizer, 256, 0).train[0]
    assert trained_parts(tokenizer, row) == trained


def test_alpaca_roles_and_a_default_system_prompt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Say hi.", "output": "hi"}, ALPACA_HISTORY])
    prepared = build(data_cfg(path, system_prompt="Be kind.", train_on_roles=["user", "assistant"]), tokenizer, 256, 0)
    plain, with_history = prepared.train
    assert spans(tokenizer, plain) == [("System: Be kind.\n", False), ("Instruction: Say hi.\nResponse:\nhi</s>", True)]
    assert tokenizer.decode(with_history["input_ids"]).startswith("System: You are a calculator.\n")  # its own wins
    # History stays context under mask_history (the default), whatever the roles: only the current exchange trains.
    assert trained_parts(tokenizer, with_history) == ["Instruction: And times 3?\nResponse:\n12</s>"]


def test_alpaca_history_generation_prompt_holds_the_whole_context(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_HISTORY, {"instruction": "Say hi.", "output": "hi"}])
    prepared = build(data_cfg(path, test_fraction=0.5), tokenizer, 256, 0)
    test_row = prepared.test[0]
    assert test_row["reference"] == "12"
    assert tokenizer.decode(test_row["prompt_ids"]).endswith("9</s>Instruction: And times 3?\nResponse:\n")


# chat: ShareGPT and OpenAI styles, tools.

WEATHER_TOOL = {"name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
SHAREGPT = {"conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": '{"temp_c": 21}'},
    {"from": "gpt", "value": "It is 21 C."}],
    "system": "Be brief.", "tools": json.dumps([WEATHER_TOOL]), "label": True, "images": []}
SHAREGPT_COLUMNS = ColumnsConfig(messages="conversations", role="from", content="value")
# What transformers should be given for SHAREGPT's row.
EXPECTED_MESSAGES = [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '{"temp_c": 21}'}, {"role": "assistant", "content": "It is 21 C."}]
EXPECTED_TOOLS = [{"type": "function", "function": WEATHER_TOOL}]


def test_sharegpt_roles_system_tools_and_tool_calls(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "sg.jsonl", [SHAREGPT])
    prepared = build(data_cfg(path, format="chat", columns=SHAREGPT_COLUMNS), tokenizer, 512, 0)
    row = prepared.train[0]
    rendered = tokenizer.apply_chat_template(EXPECTED_MESSAGES, tools=EXPECTED_TOOLS, tokenize=False)
    assert tokenizer.decode(row["input_ids"]) == rendered
    assert rendered.startswith('<|tools|>\n{"type": "function", "function": {"name": "get_weather"')
    assert trained_parts(tokenizer, row) == [
        '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}</s>\n', "It is 21 C.</s>\n"]
    assert prepared.report["ignored_fields"] == "label, images"
    assert format_report(prepared.report).endswith("; ignored fields: label, images")


def test_openai_tool_turns_and_the_built_in_template(tmp_path, tokenizer):
    row = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 C."}],
        "tools": [{"type": "function", "function": WEATHER_TOOL}]}
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None  # the built-in template serves
    example = build(data_cfg(write_jsonl(tmp_path / "oa.jsonl", [row]), format="chat"), bare, 512, 0).train[0]
    assert spans(tokenizer, example)[1:] == [
        ('<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}</s>\n', True),  # arguments parsed
        ('<|tool|>\n{"temp_c": 21}\n<|assistant|>\n', False), ("It is 21 C.</s>\n", True)]
    # tool_call_id and the call's id reach the template as OpenAI gave them.
    echo = "{% for m in messages %}{{ m.tool_call_id or '' }}{% for c in m.tool_calls or [] %}{{ c.id }}{% endfor %}" \
           "{{ m.content }}|{% endfor %}"
    echoed = build(data_cfg(tmp_path / "oa.jsonl", format="chat", chat_template=echo), tokenizer, 512, 0).train[0]
    assert tokenizer.decode(echoed["input_ids"]) == 'Weather in Paris?|call_1|call_1{"temp_c": 21}|It is 21 C.|'


def test_a_template_that_ignores_tools_is_warned_about(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "sg.jsonl", [SHAREGPT])
    plain = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}"
    build(data_cfg(path, format="chat", columns=SHAREGPT_COLUMNS, chat_template=plain), tokenizer, 512, 0)
    assert "the chat template ignores the rows' `tools`" in caplog.text
    assert "does not render the assistant turns' `tool_calls`" in caplog.text


# chat: which turns train.

CHAT = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                     {"role": "assistant", "content": "a2"}]}


@pytest.mark.parametrize("settings, trained", [
    ({}, ["a1</s>\n", "a2</s>\n"]),
    ({"mask_history": True}, ["a2</s>\n"]),
    ({"train_on_eos": "last"}, ["a1", "a2</s>\n"]),
    ({"train_on_eos": "none"}, ["a1", "a2"]),
    ({"train_on_roles": ["user", "assistant"]}, ["q1</s>\n", "a1</s>\n", "q2</s>\n", "a2</s>\n"]),
    ({"train_on_roles": ["system"]}, ["S</s>\n"]),
    ({"train_on_roles": ["user", "assistant"], "mask_history": True}, ["q2</s>\n", "a2</s>\n"]),  # the last exchange
])
def test_chat_training_control(tmp_path, tokenizer, settings, trained):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT])
    row = build(data_cfg(path, format="chat", **settings), tokenizer, 256, 0).train[0]
    assert tokenizer.decode(row["input_ids"]) == "<|system|>\nS</s>\n<|user|>\nq1</s>\n<|assistant|>\na1</s>\n" \
                                                 "<|user|>\nq2</s>\n<|assistant|>\na2</s>\n"
    assert trained_parts(tokenizer, row) == trained


def test_a_turns_own_flag_overrides_roles_and_history(tmp_path, tokenizer):
    flagged = copy.deepcopy(CHAT)
    flagged["messages"][2]["weight"] = 0  # axolotl-style 0/1 weights, mapped by data.columns.train
    flagged["messages"][3]["weight"] = 1
    path = write_jsonl(tmp_path / "c.jsonl", [flagged])
    row = build(data_cfg(path, format="chat", columns=ColumnsConfig(train="weight")), tokenizer, 256, 0).train[0]
    assert trained_parts(tokenizer, row) == ["q2</s>\n", "a2</s>\n"]
    with_history_masked = build(data_cfg(path, format="chat", columns=ColumnsConfig(train="weight"),
                                         mask_history=True), tokenizer, 256, 0).train[0]
    assert trained_parts(tokenizer, with_history_masked) == ["q2</s>\n", "a2</s>\n"]
    unmapped = build(data_cfg(path, format="chat"), tokenizer, 256, 0)  # the flag field unmapped: reported
    assert unmapped.report["ignored_fields"] == "messages.weight"


# segments: template-free.

def test_segments_are_trained_by_their_labels_with_nothing_added(tmp_path, tokenizer):
    from tokenizers.processors import TemplateProcessing
    rows = [{"segments": [{"text": "Q: 2+2?\n", "label": False}, {"text": "A: 4", "label": True},
                          {"text": " (checked)\n", "label": False}, {"text": "Q: 3+3?\nA: 6", "label": True}],
             "source": "synthetic"}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    prepared = build(data_cfg(path, format="segments"), tokenizer, 256, 0)
    row = prepared.train[0]
    assert spans(tokenizer, row) == [("Q: 2+2?\n", False), ("A: 4", True), (" (checked)\n", False),
                                     ("Q: 3+3?\nA: 6", True)]
    assert row["input_ids"] == list("".join(s["text"] for s in rows[0]["segments"]).encode())  # no EOS appended
    assert prepared.report["ignored_fields"] == "source"
    llama_like = copy.deepcopy(tokenizer)  # adds BOS by itself: so does the pipeline
    llama_like.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 257)])
    with_bos = build(data_cfg(path, format="segments"), llama_like, 256, 0).train[0]
    assert with_bos["input_ids"] == [257] + row["input_ids"] and with_bos["labels"][0] == IGNORE_INDEX


def test_segments_with_mapped_names_and_a_generation_pair(tmp_path, tokenizer):
    rows = [{"parts": [{"t": f"say {i}: ", "train": False}, {"t": str(i), "train": True}]} for i in range(4)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    prepared = build(data_cfg(path, format="segments", test_fraction=0.25,
                              columns=ColumnsConfig(segments="parts", text="t", train="train")), tokenizer, 64, 0)
    assert [trained_parts(tokenizer, row) for row in prepared.train] == [["0"], ["1"], ["3"]]
    assert tokenizer.decode(prepared.test[0]["prompt_ids"]) == "say 2: " and prepared.test[0]["reference"] == "2"


# data.columns: the README's way, key by key, typos refused; every setting in the cache key.

def test_columns_set_as_a_whole_or_key_by_key_through_hydra():
    from hydra.errors import ConfigCompositionException
    from shardtune.errors import ConfigError
    from shardtune.launcher.validation import validate
    whole = compose_cfg("data.format=chat", "data.columns={messages: conversations, role: from, content: value}")
    by_key = compose_cfg("data.format=chat", "data.columns.messages=conversations", "data.columns.role=from",
                         "data.columns.content=value")
    assert whole.data.columns == by_key.data.columns
    assert (whole.data.columns.messages, whole.data.columns.role, whole.data.columns.content) == \
        ("conversations", "from", "value")
    with pytest.raises(ConfigCompositionException, match="data.columns.rol"):
        compose_cfg("data.columns.rol=from")
    with pytest.raises(ConfigError) as error:  # `+` gets a typo past Hydra; the schema check names it
        validate(compose_cfg("+data.columns.rol=from"), "cpu", 2)
    assert error.value.key == "data.columns.rol"
    mixed = compose_cfg("data.path=null", f"data.mix=[{{path: {asset_path('data/tiny_instruct.jsonl')}, "
                                          "format: chat, columns: {messages: conversations}}]")
    assert mixed.data.mix[0].columns.messages == "conversations"


@pytest.mark.parametrize("key, value", [("columns", ColumnsConfig(output="answer")), ("train_on_roles", ["user"]),
                                        ("train_on_eos", "none"), ("mask_history", True), ("system_prompt", "Hi."),
                                        ("on_bad_row", "skip")])
def test_every_new_setting_changes_the_cache_key(tmp_path, tokenizer, key, value):
    cfg = data_cfg(write_jsonl(tmp_path / "a.jsonl", [ALPACA_HISTORY]))
    before = cache_key(cfg, tokenizer, 64, 0)[0]
    cfg[key] = value
    assert cache_key(cfg, tokenizer, 64, 0)[0] != before


def test_the_built_in_template_is_in_the_cache_key(tmp_path, tokenizer, monkeypatch):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    cfg = data_cfg(write_jsonl(tmp_path / "c.jsonl", [CHAT]), format="chat")
    before = cache_key(cfg, bare, 64, 0)[0]
    monkeypatch.setattr("shardtune.data.formats.BUILTIN_CHAT_TEMPLATE", BUILTIN_CHAT_TEMPLATE + "{# v2 #}")
    assert cache_key(cfg, bare, 64, 0)[0] != before


def test_settings_a_format_ignores_are_warned_about(caplog):
    from shardtune.launcher.validation import validate
    validate(compose_cfg("data.format=completion", "data.train_on_roles=[user]", "data.train_on_eos=none"), "cpu", 2)
    assert "data.train_on_roles is ignored: format completion does not use it" in caplog.text
    assert "train_on_eos is ignored" not in caplog.text  # completion's EOS follows it
    caplog.clear()
    validate(compose_cfg("data.mask_prompt=false", "data.mask_history=true"), "cpu", 2)
    assert "data.mask_history is ignored: data.mask_prompt=false trains on every token" in caplog.text
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        validate(compose_cfg(), "cpu", 2)
        assert "ignored" not in caplog.text
