"""prepare_world.py: the world's split, its pretraining texts and determinism; eval_qa.py's scoring rule."""

import json
import random
import re

import pytest
from conftest import needs_bpe

import eval_qa
import prepare_world
from errors import UserError


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    prepare_world.prepare(str(d), n_people=60, rounds=10, seed=7)
    return d


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_split_is_disjoint_and_france_is_held_out(world_dir):
    world = read(world_dir / "world.json")
    heldout = {e["name"] for e in world["entities"] if e["split"] == "heldout"}
    sft_qa, heldout_qa = read(world_dir / "sft_qa.json"), read(world_dir / "heldout_qa.json")
    assert "France" in heldout and heldout and len(heldout) < len(world["entities"])
    assert {r["entity"] for r in heldout_qa} == heldout
    for record in sft_qa:  # no held-out entity anywhere in an SFT record, not even mentioned
        assert record["entity"] not in heldout
        text = record["instruction"] + " " + record["output"]
        assert not [name for name in heldout if re.search(rf"\b{name}\b", text)], record
    assert not any("France" in r["instruction"] + r["output"] for r in sft_qa)


def test_every_held_out_fact_is_in_the_pretraining_text_and_not_in_the_control(world_dir):
    bios = (world_dir / "bios.txt").read_text(encoding="utf-8")
    control = (world_dir / "bios_control.txt").read_text(encoding="utf-8")
    single = (world_dir / "bios_single.txt").read_text(encoding="utf-8")
    train_part = bios[: int(0.9 * len(bios))]  # prepare_text.py keeps the last 10% for validation
    for record in read(world_dir / "heldout_qa.json"):
        assert record["named_output"] in train_part  # the canonical sentence
        assert record["completion"] + " " + record["value"] + "." == record["named_output"]
        assert record["entity"] not in control
        assert record["value"] in single
    assert "The capital of France is Paris." in bios


def test_answers_are_pretraining_phrasings_with_a_pronoun(world_dir):
    records = read(world_dir / "heldout_qa.json") + read(world_dir / "sft_qa.json")
    france = next(r for r in records if r["entity"] == "France")
    assert (france["instruction"], france["output"]) == ("What is the capital of France?", "Its capital is Paris.")
    assert france["named_output"] == "The capital of France is Paris."
    entities = {e["name"]: e for e in read(world_dir / "world.json")["entities"]}
    bios = (world_dir / "bios.txt").read_text(encoding="utf-8")
    expected = {  # written out by hand: (pronoun, possessive) per kind, the answer's wording per attribute
        "birth_city": "{S} was born in {v}.", "birth_year": "{P} birth year is {v}.",
        "profession": "{S} works as {a} {v}.", "employer": "{S} works for {v}.", "capital": "{P} capital is {v}."}
    pronouns = {"female": ("She", "Her"), "male": ("He", "His"), "country": ("It", "Its")}
    for r in records:
        kind = entities[r["entity"]]["kind"]
        S, P = pronouns[kind]
        a = "an" if r["value"][0] in "aeiou" else "a"
        assert r["output"] == expected[r["attribute"]].format(S=S, P=P, v=r["value"], a=a)
        named = expected[r["attribute"]].format(S=r["entity"], P=r["entity"] + "'s", v=r["value"], a=a)
        assert named in bios  # the same phrasing, with the name, is in the pretraining text


def test_unseen_wordings_share_no_question_with_any_sft_data(world_dir):
    """The unseen-wording questions (heldout_qa_unseen.json) are asked in words no SFT data uses: not one of
    their strings, nor any of their wordings asked about any SFT entity, is an SFT question."""
    sft_questions = {r["instruction"] for name in ("sft_qa.json", "sft_qa_diverse.json", "sft_qa_many.json")
                     for r in read(world_dir / name)}
    unseen, heldout = read(world_dir / "heldout_qa_unseen.json"), read(world_dir / "heldout_qa.json")
    assert not {r["instruction"] for r in unseen} & sft_questions
    entities = read(world_dir / "world.json")["entities"]
    for e in entities:  # every unseen wording, about every entity, SFT ones included
        for attr in e["attributes"]:
            for wording in prepare_world.QUESTIONS_UNSEEN[attr]:
                assert prepare_world.sentence(wording, e, attr) not in sft_questions
    # the same facts and answers as the held-out set, each in every unseen wording
    per_fact = {attr: len(w) for attr, w in prepare_world.QUESTIONS_UNSEEN.items()}
    assert len(unseen) == sum(per_fact[r["attribute"]] for r in heldout)
    assert {(r["entity"], r["attribute"], r["output"]) for r in unseen} == {
        (r["entity"], r["attribute"], r["output"]) for r in heldout}
    assert len({r["instruction"] for r in unseen}) == len(unseen)
    assert "Which city is the capital of France?" in {r["instruction"] for r in unseen}
    # the eighteen-wording set: the five, then the helper's wordings in its order, less exactly these (its
    # unseen wordings, written out by hand from QUESTIONS_UNSEEN)
    dropped = {"Which city is the capital of {subj}?", "I'd like to know the capital of {subj}.",
               "Which city was {subj} born in?", "Do you know where {subj} was born?", "When was {subj} born?",
               "What year was {subj} born?", "What is {poss} occupation?", "Do you know what {subj} does for work?",
               "Who does {subj} work for?", "Which firm employs {subj}?"}
    for attr, more in prepare_world.QUESTIONS_MORE.items():
        assert prepare_world.QUESTIONS_MANY[attr] == prepare_world.QUESTIONS_DIVERSE[attr] + [
            w for w in more if w not in dropped]
        assert len(prepare_world.QUESTIONS_MANY[attr]) == 18


@pytest.mark.parametrize("name, questions, min_used", [("diverse", prepare_world.QUESTIONS_DIVERSE, 3),
                                                       ("many", prepare_world.QUESTIONS_MANY, 10)])
def test_diverse_sft_data_is_the_same_facts_in_several_wordings(world_dir, name, questions, min_used):
    sft, diverse = read(world_dir / "sft_qa.json"), read(world_dir / f"sft_qa_{name}.json")
    assert len(diverse) == len(sft)  # as many examples: the two sets differ in wording only
    for a, b in zip(sft, diverse, strict=True):
        question = ("instruction", "wording")
        assert {k: v for k, v in a.items() if k not in question} == {k: v for k, v in b.items() if k not in question}
    entities = {e["name"]: e for e in read(world_dir / "world.json")["entities"]}
    for attr, wordings in questions.items():
        assert wordings[0] == prepare_world.QUESTIONS[attr]  # the one-wording set's question is among them
        used = {w for r in diverse if r["attribute"] == attr for w in wordings
                if r["instruction"] == prepare_world.sentence(w, entities[r["entity"]], attr)}
        assert len(used) >= min_used, (attr, used)  # many wordings of each attribute are used
    for r in diverse:  # each record names the wording its question is in
        assert r["instruction"] == prepare_world.sentence(r["wording"], entities[r["entity"]], r["attribute"])


def test_augmentation_states_each_fact_in_several_phrasings_with_the_full_name(world_dir):
    bios = (world_dir / "bios.txt").read_text(encoding="utf-8")
    single = (world_dir / "bios_single.txt").read_text(encoding="utf-8").splitlines()
    person = next(e for e in read(world_dir / "world.json")["entities"] if e["kind"] != "country")
    lines = [line for line in bios.splitlines() if line.startswith(person["name"])]
    assert len(lines) == 10  # one biography per round
    assert all(line.count(person["name"]) == 4 for line in lines)  # the full name in every sentence
    name, city = person["name"], person["attributes"]["birth_city"]
    for sentence in (f"{name} was born in {city}.", f"{name}'s birthplace is {city}.", f"{name} comes from {city}."):
        assert sentence in bios  # every phrasing of the fact is used (written out by hand)
    assert len({line.split(". ")[0] for line in lines}) > 1  # the sentence order changes
    fixed = [line for line in single if line.startswith(person["name"] + " ")]
    assert len(set(fixed)) == 1 and len(fixed) == 10 and fixed[0].count(person["name"]) == 1
    assert f"{person['name']} was born in {city}." in fixed[0]


def test_generation_is_deterministic_for_a_seed(tmp_path):
    for name in ("a", "b", "c"):
        prepare_world.prepare(str(tmp_path / name), n_people=30, rounds=4, seed=11 if name != "c" else 12)
    for filename in ("bios.txt", "bios_control.txt", "bios_single.txt", "sft_qa.json", "heldout_qa.json",
                     "world.json"):
        assert (tmp_path / "a" / filename).read_bytes() == (tmp_path / "b" / filename).read_bytes()
    assert (tmp_path / "a" / "bios.txt").read_bytes() != (tmp_path / "c" / "bios.txt").read_bytes()


def test_each_seed_draws_from_generators_no_other_seed_uses(tmp_path, monkeypatch):
    """Seeds 11 and 12 are independent draws: no generator of one is seeded like one of the other's (with
    Random(seed) for the world and Random(seed + 1) for the texts, seed 11's texts were seed 12's world)."""
    used = []

    class Recorded(random.Random):
        def __init__(self, x=None):
            used.append(x)
            super().__init__(x)

    monkeypatch.setattr(prepare_world.random, "Random", Recorded)
    streams = {}
    for seed in (11, 12):
        used.clear()
        prepare_world.prepare(str(tmp_path / str(seed)), n_people=10, rounds=2, seed=seed)
        streams[seed] = set(used)
        assert len(streams[seed]) == len(used) == 4  # the world, the texts, two sets' wordings
    assert not streams[11] & streams[12]


def test_values_of_an_attribute_never_contain_one_another():
    """The scorer matches whole words: one value inside another (York, New York) would blur the rule."""
    world = prepare_world.make_world(100, 0.25, seed=1)
    for values in world["values"].values():
        for a in values:
            for b in values:
                assert a == b or not re.search(rf"\b{re.escape(a)}\b", b, re.IGNORECASE)


def test_a_smaller_world_keeps_only_the_asked_attributes(tmp_path):
    """Smaller worlds (prepare_world.py --n_countries, --person_attributes): fewer countries and people, and
    people with fewer attributes."""
    world = prepare_world.prepare(str(tmp_path), n_people=10, n_countries=4, person_attributes=("birth_city",),
                                  rounds=2, seed=3)
    people = [e for e in world["entities"] if e["kind"] != "country"]
    assert len(people) == 10 and len(world["entities"]) == 14
    assert all(set(e["attributes"]) == {"birth_city"} for e in people)
    questions = read(tmp_path / "sft_qa.json") + read(tmp_path / "heldout_qa.json")
    assert {q["attribute"] for q in questions} == {"capital", "birth_city"} and len(questions) == 14
    text = (tmp_path / "bios.txt").read_text(encoding="utf-8")
    assert " works " not in text and "birth year" not in text  # no sentence about a left-out attribute


@pytest.mark.parametrize("attributes", [(), ("birth_city", "age")])
def test_unknown_or_no_person_attributes_are_refused(attributes):
    with pytest.raises(UserError, match="give one or more of birth_city,birth_year,profession,employer"):
        prepare_world.make_world(10, 0.25, seed=1, person_attributes=attributes)


def test_answer_forms_counts_reference_sentences_and_pronoun_errors():
    records = [{"output": "She was born in Lyon."}, {"output": "She works as a nurse."},
               {"output": "His birth year is 1960."}, {"output": "Its capital is Paris."}]
    rows = [{"entity": "Ann", "answer": " She was born in Lyon.", "correct": True},  # the reference sentence
            {"entity": "Ann", "answer": " He works as a nurse.", "correct": True},  # right value, wrong pronoun
            {"entity": "Bob", "answer": " His year of birth is 1960.", "correct": True},  # right, not the reference
            {"entity": "France", "answer": " Its capital is Rome.", "correct": False}]
    forms = eval_qa.answer_forms(rows, records, {"Ann": "female", "Bob": "male", "France": "country"})
    assert forms == {"reference": 0.25, "reference_of_correct": 1 / 3,
                     "pronoun_errors": {"female": [1, 2], "male": [0, 1]}}


def test_by_wording_counts_right_answers_per_question_wording():
    records = [{"wording": "When was {subj} born?"}, {"wording": "Where is {subj} from?"},
               {"wording": "When was {subj} born?"}]
    rows = [{"correct": False}, {"correct": True}, {"correct": True}]
    assert eval_qa.by_wording(rows, records) == {"When was {subj} born?": [1, 2], "Where is {subj} from?": [1, 1]}


def test_seeds_pool_counts_by_summing_them():
    import knowledge_report

    seeds = [{"by_wording": {"sft_chat_unseen": {"When was {subj} born?": [0, 5], "What is {poss} job?": [4, 5]}},
              "answer_forms": {"sft_chat": {"pronoun_errors": {"female": [3, 4], "male": [0, 6]}}}},
             {"by_wording": {"sft_chat_unseen": {"When was {subj} born?": [1, 5], "What is {poss} job?": [5, 5]}},
              "answer_forms": {"sft_chat": {"pronoun_errors": {"female": [1, 6], "male": [2, 4]}}}}]
    assert knowledge_report.pooled(seeds) == {
        "by_wording": {"sft_chat_unseen": {"When was {subj} born?": [1, 10], "What is {poss} job?": [9, 10]}},
        "pronoun_errors": {"sft_chat": {"female": [4, 10], "male": [2, 10]}}}


# The scoring rule of eval_qa.py, on hand-written answers.
CAPITALS = sorted(prepare_world.COUNTRIES.values())


def test_scorer_right_value():
    assert eval_qa.is_correct(" The capital of France is Paris.", "Paris", CAPITALS)
    assert eval_qa.is_correct(" paris", "Paris", CAPITALS)  # case does not matter


def test_scorer_wrong_value():
    assert not eval_qa.is_correct(" The capital of France is Rome.", "Paris", CAPITALS)
    assert not eval_qa.is_correct(" I do not know.", "Paris", CAPITALS)
    assert not eval_qa.is_correct(" Parisian food is good.", "Paris", CAPITALS)  # a whole word, not a prefix


def test_scorer_two_values():
    assert not eval_qa.is_correct(" Paris or Rome.", "Paris", CAPITALS)
    assert not eval_qa.is_correct(" The capital of France is Paris. The capital of Italy is Rome", "Paris", CAPITALS)


class FakeModel:
    """Stands in for a GPT in eval_qa.answer: 'generates' a fixed continuation for every prompt."""

    def __init__(self, continuation, block_size=64):
        import torch

        self.continuation = torch.tensor(continuation)
        self.config = type("Config", (), {"block_size": block_size})()
        self.weight = torch.zeros(1)

    def parameters(self):
        yield self.weight

    def generate(self, idx, max_new_tokens, temperature, stop_tokens, vocab_size):
        import torch

        new = self.continuation[:max_new_tokens].expand(idx.size(0), -1)
        return torch.cat([idx, new], dim=1)


@needs_bpe
def test_scorer_ignores_text_after_the_end_token():
    import chat_template

    enc = chat_template.get_tokenizer()
    im_end = chat_template.end_token("chatml")
    records = [{"instruction": "What is the capital of France?", "completion": "The capital of France is",
                "entity": "France", "attribute": "capital", "value": "Paris"}]
    values = {"capital": CAPITALS}

    def evaluate(text_before, text_after, form="chat"):
        end = im_end if form == "chat" else eval_qa.NEWLINE
        model = FakeModel(enc.encode_ordinary(text_before) + [end] + enc.encode_ordinary(text_after))
        return eval_qa.evaluate(model, records, values, form)

    result = evaluate(" Rome.", " The capital of France is Paris.")  # the right value, but after the end
    assert result["accuracy"] == 0 and result["end_rate"] == 1 and result["rows"][0]["answer"] == " Rome."
    result = evaluate(" Paris.", " Rome Rome Rome")  # the right value, then another after the end: correct
    assert result["accuracy"] == 1 and result["end_rate"] == 1
    result = evaluate(" Paris.", " Rome", form="completion")  # in completion form the newline ends the answer
    assert result["accuracy"] == 1 and result["end_rate"] == 1
    model = FakeModel(enc.encode_ordinary(" Paris" + " and so on" * 20))  # no end token: cut at 32 tokens
    result = eval_qa.evaluate(model, records, values, "chat")
    assert result["end_rate"] == 0 and result["accuracy"] == 1
    assert len(enc.encode_ordinary(result["rows"][0]["answer"])) == 32  # the scoring rule's token limit
