"""Streaming text assembly: no half characters, no leaked start of a stop sequence."""

from kubetune.workers.serve.textstream import TextAssembler


def feed(assembler: TextAssembler, texts: list[str]) -> list[str]:
    return [assembler.update(t) for t in texts]


def test_plain_text_is_emitted_as_it_grows():
    assembler = TextAssembler()
    assert feed(assembler, ["He", "Hello", "Hello world"]) == ["He", "llo", " world"]
    assert assembler.finish() == "" and not assembler.stopped


def test_a_stop_split_over_tokens_is_held_back_then_cut():
    assembler = TextAssembler(("END",))
    deltas = feed(assembler, ["ab", "abE", "abEN", "abEND tail"])
    assert deltas == ["ab", "", "", ""]
    assert assembler.stopped and assembler.text == "ab"


def test_held_back_text_is_released_when_it_turns_out_not_to_be_a_stop():
    assembler = TextAssembler(("END",))
    assert feed(assembler, ["xE", "xEx"]) == ["x", "Ex"]


def test_held_back_prefix_is_flushed_when_generation_ends():
    assembler = TextAssembler(("END",))
    assert feed(assembler, ["okEN"]) == ["ok"]
    assert assembler.finish() == "EN"


def test_an_incomplete_utf8_character_waits_for_its_next_byte():
    assembler = TextAssembler()
    assert feed(assembler, ["caf\ufffd", "café"]) == ["caf", "é"]


def test_earliest_of_several_stops_wins():
    assembler = TextAssembler(("\n\n", "B"))
    assert feed(assembler, ["aB\n\nc"]) == ["a"]
    assert assembler.text == "a"
