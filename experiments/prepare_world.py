"""
A small world whose facts are known: the data of the knowledge experiment (experiments/knowledge.py).

    python experiments/prepare_world.py                       # -> data/world/
    python prepare_text.py --input data/world/bios.txt --out_dir data/world/text
    python prepare_alpaca.py --input data/world/sft_qa.json --out_dir data/world/sft --val_size 16

The world: real countries with their capitals (France -> Paris among them) and a synthetic population, each
person with a birth city, a birth year, a profession and an employer. Its entities are split in two: SFT
entities, whose questions make the SFT data, and held-out entities, whose questions appear in no SFT data
(France is always held out). Every fact of both kinds is in the pretraining text.

The pretraining text follows Allen-Zhu & Li, Physics of Language Models 3.1 (arXiv 2309.14316): a fact can
be extracted by fine-tuning only if pretraining stated it in several ways. So each entity gets one short
biography per round, and every round states every fact again with "knowledge augmentation": another
phrasing (each phrasing used in turn), the sentences in another order, and the full name in every sentence
(a window of the text that starts mid-biography still says whose fact it is). Files written to out_dir:

    bios.txt            the pretraining text, augmented, all entities (one biography per line)
    bios_control.txt    the same without the held-out entities: a model that never saw their facts
    bios_single.txt     no augmentation: one fixed biography per entity (fixed phrasing and order, the name
                        once, pronouns after), repeated as often as bios.txt repeats its rounds
    sft_qa.json         questions about the SFT entities, as prepare_alpaca.py reads them (one wording each)
    sft_qa_diverse.json the same questions, each in one of five wordings (QUESTIONS_DIVERSE)
    sft_qa_many.json    the same questions, each in one of eighteen wordings (QUESTIONS_MANY)
    heldout_qa.json     questions about the held-out entities (never SFT data; for evaluation only)
    heldout_qa_unseen.json  the held-out entities' questions in wordings no SFT data uses (QUESTIONS_UNSEEN)
    world.json          the entities, their split, and every attribute's possible values (for the scorer)

A QA record is {"instruction", "output"} (what prepare_alpaca.py reads) plus "entity", "attribute", "value",
"wording" (the question's template), "completion" (the canonical sentence up to the value, for prompting a base
model) and "named_output" (the canonical sentence itself). The answer is a pretraining phrasing with a pronoun
for the subject: "What is the capital of France?" -> "Its capital is Paris." Generation is deterministic for a
seed.
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root

import errors  # noqa: E402
from errors import UserError  # noqa: E402

# Real countries and their capitals (no capital's name contains another's, so a scorer can tell them apart).
COUNTRIES = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Peru": "Lima", "Canada": "Ottawa", "Australia": "Canberra", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens",
    "Turkey": "Ankara", "Iran": "Tehran", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Ireland": "Dublin", "Hungary": "Budapest", "Cuba": "Havana", "Ghana": "Accra", "Colombia": "Bogota",
    "Venezuela": "Caracas", "Belgium": "Brussels", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Iraq": "Baghdad", "Nepal": "Kathmandu", "Iceland": "Reykjavik", "Uruguay": "Montevideo",
    "Ecuador": "Quito", "Senegal": "Dakar",
}
ALWAYS_HELD_OUT = "France"  # the demonstration: SFT never sees France's capital

# The synthetic population: its attribute values, and names (surnames are unique, first names repeat).
FIRST_NAMES = {
    "female": ["Alice", "Maria", "Emma", "Sophie", "Laura", "Nina", "Clara", "Julia", "Hannah", "Grace", "Rosa",
               "Elena", "Irene", "Martha", "Lucy", "Vera", "Diana", "Helen", "Sarah", "Anna"],
    "male": ["David", "Peter", "Oscar", "Thomas", "Henry", "Martin", "Victor", "Samuel", "Daniel", "Felix",
             "George", "Lucas", "Hugo", "Simon", "Arthur", "Robert", "Walter", "Frank", "Leon", "Paul"],
}
SURNAMES = [
    "Morgan", "Fischer", "Novak", "Larsen", "Moreau", "Keller", "Romano", "Silva", "Becker", "Jensen", "Kowalski",
    "Dubois", "Weber", "Ricci", "Santos", "Walsh", "Brennan", "Holm", "Vogel", "Marino", "Costa", "Sandberg",
    "Lindqvist", "Hughes", "Porter", "Fleming", "Gallagher", "Harper", "Ingram", "Jennings", "Lambert",
    "Mercer", "Nolan", "Osborne", "Palmer", "Quinn", "Ramsey", "Sheridan", "Tanner", "Underwood", "Vaughn",
    "Whitaker", "Yates", "Abbott", "Barlow", "Carver", "Dalton", "Ellison", "Fletcher", "Garrett", "Hammond",
    "Irving", "Jarvis", "Kendall", "Lowell", "Maddox", "Norris", "Oakley", "Prescott", "Radcliffe", "Sutton",
    "Thornton", "Upton", "Vincent", "Wheeler", "Ashford", "Blake", "Crawford", "Donovan", "Everett", "Forbes",
    "Gibson", "Hayward", "Kirby", "Lawson", "Monroe", "Nash", "Owens", "Pearson", "Reeves", "Shelton",
    "Travis", "Wallace", "Bradley", "Chandler", "Dawson", "Emerson", "Fowler", "Grant", "Hudson", "Jordan",
    "Knight", "Lindgren", "Mitchell", "Newman", "Parker", "Russell", "Spencer", "Turner", "Warren", "Bauer",
    "Hoffmann", "Schmidt", "Wagner", "Richter", "Klein", "Wolf", "Neumann", "Schwarz", "Zimmermann",
    "Hartmann", "Lange", "Werner", "Krause", "Lehmann", "Brandt", "Haas", "Berger", "Fuchs", "Roth", "Sommer",
    "Marchetti", "Bianchi", "Rossi", "Ferrari", "Esposito", "Colombo", "Rinaldi", "Caruso", "Greco",
    "Bruno", "Gallo", "Conti", "Mancini", "Lombardi", "Moretti", "Barbieri", "Fontana", "Leone", "Serra",
    "Vidal", "Navarro", "Torres", "Ramos", "Molina", "Ortega", "Delgado", "Castro", "Herrera", "Medina",
    "Garrido", "Pereira", "Ferreira", "Almeida", "Carvalho", "Ribeiro", "Lopes", "Barros", "Pinto", "Moura",
    "Nielsen", "Hansen", "Pedersen", "Andersen", "Eriksen", "Berg", "Dahl", "Lund", "Strand", "Bakken",
    "Kowal", "Nowak", "Wozniak", "Mazur", "Krawczyk", "Horvath", "Varga", "Toth", "Szabo", "Molnar",
    "Kerr", "Boyle", "Doyle", "Quigley", "Rowe", "Stanton", "Talbot", "Whitman", "Ashby", "Bishop", "Coleman",
    "Draper", "Fairbanks", "Goodwin", "Hale", "Keane", "Langley", "Marsh", "Pryce", "Sinclair",
]
BIRTH_CITIES = ["Lyon", "Marseille", "Munich", "Hamburg", "Milan", "Naples", "Barcelona", "Seville", "Porto",
                "Osaka", "Kyoto", "Shanghai", "Mumbai", "Chicago", "Boston", "Seattle", "Toronto", "Vancouver",
                "Sydney", "Melbourne"]
BIRTH_YEARS = [str(year) for year in range(1950, 2000)]
PROFESSIONS = ["teacher", "nurse", "pilot", "baker", "lawyer", "architect", "engineer", "dentist", "journalist",
               "photographer", "carpenter", "librarian", "chemist", "farmer", "musician", "painter", "surgeon",
               "plumber", "economist", "translator"]
EMPLOYERS = ["Northwind", "Bluepeak", "Silverline", "Redstone", "Greenfield", "Ironbridge", "Brightwater",
             "Oakridge", "Stormcloud", "Goldcrest", "Clearview", "Highgate", "Lakeside", "Starlight", "Westbrook"]
PERSON_VALUES = {"birth_city": BIRTH_CITIES, "birth_year": BIRTH_YEARS, "profession": PROFESSIONS,
                 "employer": EMPLOYERS}

# How each attribute is stated. {subj} is the full name (or a pronoun), {poss} its possessive, {a} the article
# of {value}. The first phrasing is the canonical one: cut before the value, it is the completion prompt that
# asks a base model for the fact ("The capital of France is"), so it ends with the value.
# No phrasing of one attribute starts like another attribute's, so a prompt says which attribute it asks for.
PHRASINGS = {
    "capital": ["The capital of {subj} is {value}.", "{poss} capital is {value}.",
                "{poss} capital city is {value}.", "{subj} is governed from {value}."],
    "birth_city": ["{subj} was born in {value}.", "{poss} birthplace is {value}.", "{subj} comes from {value}."],
    "birth_year": ["{poss} birth year is {value}.", "{poss} year of birth is {value}.",
                   "{subj} came into the world in {value}."],
    "profession": ["{subj} works as {a} {value}.", "{subj} earns a living as {a} {value}.",
                   "{subj} is employed as {a} {value}."],
    "employer": ["{subj} works for {value}.", "{subj} is employed by {value}.", "{subj} has a job at {value}."],
}
QUESTIONS = {
    "capital": "What is the capital of {subj}?",
    "birth_city": "Where was {subj} born?",
    "birth_year": "In what year was {subj} born?",
    "profession": "What does {subj} do for a living?",
    "employer": "Which company does {subj} work for?",
}
# Other wordings of the same questions, for SFT data in several phrasings (sft_qa_diverse.json). The first of
# each is QUESTIONS' own, so the held-out questions in that wording are trained phrasings for both SFT sets.
QUESTIONS_DIVERSE = {
    "capital": ["What is the capital of {subj}?", "What is {poss} capital city?", "Tell me the capital of {subj}.",
                "Can you tell me what the capital of {subj} is?", "Which city serves as the capital of {subj}?"],
    "birth_city": ["Where was {subj} born?", "In which city was {subj} born?", "What is {poss} birthplace?",
                   "Tell me where {subj} was born.", "What city does {subj} come from?"],
    "birth_year": ["In what year was {subj} born?", "What is {poss} year of birth?",
                   "Tell me the year {subj} was born.", "Which year was {subj} born in?",
                   "What year did {subj} come into the world?"],
    "profession": ["What does {subj} do for a living?", "What is {poss} profession?", "Tell me what {subj} works as.",
                   "What kind of work does {subj} do?", "What is {subj} employed as?"],
    "employer": ["Which company does {subj} work for?", "Who is {poss} employer?",
                 "Tell me which company employs {subj}.", "Where does {subj} work?",
                 "For which company does {subj} work?"],
}
# Wordings that no SFT data uses, asked about the held-out entities only (heldout_qa_unseen.json): does the
# format SFT taught carry to a question in a user's own words? Written once, before any model answered them,
# and not tuned afterwards; they include the wordings a reader found the one-phrasing SFT model failing on.
QUESTIONS_UNSEEN = {
    "capital": ["Which city is the capital of {subj}?", "What's the capital city of {subj}?",
                "{subj}: what is its capital?", "I'd like to know the capital of {subj}."],
    "birth_city": ["What is {poss} place of birth?", "Which city was {subj} born in?", "Where is {subj} from?",
                   "Do you know where {subj} was born?"],
    "birth_year": ["When was {subj} born?", "What year was {subj} born?", "Do you know the birth year of {subj}?",
                   "In which year was {subj} born?"],
    "profession": ["What is {poss} job?", "What is {poss} occupation?", "What does {subj} work as?",
                   "Do you know what {subj} does for work?"],
    "employer": ["Who does {subj} work for?", "Which firm employs {subj}?", "What company is {subj} employed by?",
                 "Do you know where {subj} works?"],
}
# Fifteen more wordings of each attribute, for SFT data in many wordings (sft_qa_many.json). Written after the
# five-wording result, by a separate helper session that was shown the attributes and QUESTIONS_DIVERSE but never
# QUESTIONS_UNSEEN, asked for "the range of ways real users actually ask". Kept here as written. It wrote 10 of
# the 20 unseen wordings word for word (the common ways to ask), so QUESTIONS_MANY drops every wording that is an
# unseen one: the single rule, fixed before the helper wrote. Many kept ones are close to an unseen wording
# ("What's {poss} job?" beside "What is {poss} job?"), as real SFT data would be.
QUESTIONS_MORE = {
    "capital": [
        "Which city is the capital of {subj}?", "Name the capital of {subj}.", "{poss} capital is which city?",
        "Do you know the capital of {subj}?", "What's the capital of {subj}?", "Capital of {subj}?",
        "I'd like to know the capital of {subj}.", "Could you please tell me the capital city of {subj}?",
        "What city is {poss} capital?", "Please state the capital of {subj}.",
        "I'm curious, what's {poss} capital?", "The capital of {subj} is which city?",
        "What is the name of {poss} capital?", "Identify the capital city of {subj}.",
        "Quick question: what is the capital of {subj}?"
    ],
    "birth_city": [
        "Which city was {subj} born in?", "Where is {subj} originally from?", "What is the city of {poss} birth?",
        "Name the city where {subj} was born.", "Do you know where {subj} was born?", "{poss} place of birth?",
        "Where's {subj} from originally?", "Could you tell me {poss} birthplace?", "{subj} was born in which city?",
        "What is {poss} hometown?", "Birthplace of {subj}?", "I'd like to know where {subj} was born.",
        "Please tell me the city {subj} was born in.", "What city was {subj} born in?",
        "Which city is {poss} place of birth?"
    ],
    "birth_year": [
        "When was {subj} born?", "What year was {subj} born?", "{subj} was born in which year?",
        "Name the year of {poss} birth.", "Do you know what year {subj} was born?", "What is {poss} birth year?",
        "Birth year of {subj}?", "Could you tell me the year {subj} was born?", "Which year marks {poss} birth?",
        "I'd like to know {poss} year of birth.", "Please state the year in which {subj} was born.",
        "What's the year {subj} was born?", "Can you find out when {subj} was born?", "Tell me {poss} birth year.",
        "In which year did {subj} come into the world?"
    ],
    "profession": [
        "What is {poss} occupation?", "What's {poss} job?", "What does {subj} do?",
        "What line of work is {subj} in?", "{poss} profession?", "Could you tell me what {subj} does for a living?",
        "What job does {subj} have?", "What is {subj} by profession?", "Name {poss} occupation.",
        "Do you know what {subj} does for work?", "What kind of job does {subj} hold?",
        "I'm wondering what {subj} does professionally.", "What career does {subj} have?",
        "Which profession does {subj} practice?", "Please state {poss} job title."
    ],
    "employer": [
        "What company does {subj} work for?", "Who does {subj} work for?", "Which firm employs {subj}?",
        "What company employs {subj}?", "{subj} works at which company?", "Who employs {subj}?",
        "Which company is {subj} employed by?", "Name the company {subj} works for.",
        "Do you know which company {subj} works at?", "Could you tell me who {subj} works for?", "{poss} employer?",
        "Which organization does {subj} work for?", "I'd like to know the name of {poss} employer.",
        "What is the name of the company {subj} works for?", "At which company is {subj} currently employed?"
    ],
}
# The many-wording set: the five wordings, then the helper's that no unseen wording equals (18 per attribute).
UNSEEN_WORDINGS = {w for wordings in QUESTIONS_UNSEEN.values() for w in wordings}
QUESTIONS_MANY = {attr: QUESTIONS_DIVERSE[attr] + [w for w in QUESTIONS_MORE[attr] if w not in UNSEEN_WORDINGS]
                  for attr in QUESTIONS_DIVERSE}
PRONOUNS = {"female": ("She", "Her"), "male": ("He", "His"), "country": ("It", "Its")}
# The answer to a question: a pretraining phrasing with the subject as a pronoun ("Its capital is Paris.",
# "She was born in Lyon."), the way a person answers. Measured, not a matter of taste: with answers that
# repeat the name ("The capital of France is Paris.") a small model's SFT learns its training entities'
# names instead of copying the one in the question (experiments/README.md, "the answer's form").
ANSWERS = {"capital": PHRASINGS["capital"][1],  # "{poss} capital is {value}.": the canonical one has no pronoun
           **{attr: PHRASINGS[attr][0] for attr in ("birth_city", "birth_year", "profession", "employer")}}


def make_world(n_people: int, heldout_fraction: float, seed: int, n_countries: int = len(COUNTRIES),
               person_attributes: tuple[str, ...] = tuple(PERSON_VALUES)) -> dict:
    """The entities (the first n_countries countries, France first, then people with person_attributes) with
    attributes and split."""
    if n_people > len(SURNAMES) or not 1 <= n_countries <= len(COUNTRIES):
        raise UserError(f"n_people {n_people}, n_countries {n_countries}: at most {len(SURNAMES)} people (one "
                        f"surname each) and 1 to {len(COUNTRIES)} countries")
    if not person_attributes or not set(person_attributes) <= set(PERSON_VALUES):
        raise UserError(f"person_attributes {','.join(person_attributes) or '(none)'}: give one or more of "
                        f"{','.join(PERSON_VALUES)}")
    rng = random.Random(f"{seed}:world")  # (each use of the seed has a generator of its own: see prepare)
    entities = [{"name": country, "kind": "country", "attributes": {"capital": capital}}
                for country, capital in list(COUNTRIES.items())[:n_countries]]
    for surname in rng.sample(SURNAMES, n_people):
        gender = rng.choice(["female", "male"])
        entities.append({"name": f"{rng.choice(FIRST_NAMES[gender])} {surname}", "kind": gender,
                         "attributes": {attr: rng.choice(PERSON_VALUES[attr]) for attr in person_attributes}})
    # The split: the same share of countries and of people held out, France always among them.
    for kind in ("country", "person"):
        group = [e for e in entities if (e["kind"] == "country") == (kind == "country")]
        n_heldout = round(heldout_fraction * len(group))
        heldout = rng.sample([e for e in group if e["name"] != ALWAYS_HELD_OUT], n_heldout - (kind == "country"))
        for e in group:
            e["split"] = "heldout" if (e in heldout or e["name"] == ALWAYS_HELD_OUT) else "sft"
    values = {attr: sorted({e["attributes"][attr] for e in entities if attr in e["attributes"]})
              for attr in PHRASINGS}
    return {"seed": seed, "entities": entities, "values": values}


def sentence(template: str, entity: dict, attr: str, use_pronoun: bool = False) -> str:
    value = entity["attributes"][attr]
    subj, poss = PRONOUNS[entity["kind"]] if use_pronoun else (entity["name"], entity["name"] + "'s")
    text = template.format(subj=subj, poss=poss, value=value, a="an" if value[0] in "aeiou" else "a")
    return text[0].upper() + text[1:]


def augmented_text(entities: list[dict], rounds: int, rng: random.Random, phrasings: dict) -> str:
    """rounds biographies per entity: each round another of phrasings[attr] for every fact (in turn, starting at
    a random one), the sentences shuffled, the full name in each; the biographies of a round in random order."""
    first_phrasing = {(e["name"], attr): rng.randrange(len(phrasings[attr])) for e in entities
                      for attr in e["attributes"]}
    lines = []
    for r in range(rounds):
        round_lines = []
        for e in entities:
            # (a country's one fact is stated twice per biography, so that it is read about as often as a person's)
            sentences = []
            for attr in e["attributes"]:
                for k in range(2 if e["kind"] == "country" else 1):
                    phrasing = (first_phrasing[e["name"], attr] + r + k) % len(phrasings[attr])
                    sentences.append(sentence(phrasings[attr][phrasing], e, attr))
            rng.shuffle(sentences)
            round_lines.append(" ".join(sentences))
        rng.shuffle(round_lines)
        lines += round_lines
    return "\n".join(lines) + "\n"


def single_text(entities: list[dict], rounds: int, rng: random.Random) -> str:
    """The same number of biographies, but each entity's is always the same text: canonical phrasings in a
    fixed order, the name in the first sentence only (pronouns after), as in a plain encyclopedia."""
    bios = {e["name"]: " ".join(sentence(PHRASINGS[attr][0], e, attr, use_pronoun=i > 0)
                                for i, attr in enumerate(e["attributes"])) for e in entities}
    lines = []
    for _ in range(rounds):
        round_lines = [bios[e["name"]] for e in entities]
        rng.shuffle(round_lines)
        lines += round_lines
    return "\n".join(lines) + "\n"


def qa_records(entities: list[dict], questions: dict = QUESTIONS) -> list[dict]:
    """One record per fact, asked in questions[attr] (one wording), or one per fact and wording where
    questions[attr] is a list of wordings."""
    records = []
    for e in entities:
        for attr in e["attributes"]:
            canonical = sentence(PHRASINGS[attr][0], e, attr)
            value = e["attributes"][attr]
            wordings = questions[attr] if isinstance(questions[attr], list) else [questions[attr]]
            for wording in wordings:
                records.append({"instruction": sentence(wording, e, attr), "wording": wording,
                                "output": sentence(ANSWERS[attr], e, attr, use_pronoun=True),
                                "entity": e["name"], "attribute": attr, "value": value,
                                "completion": canonical[: canonical.rindex(value)].rstrip(),
                                "named_output": canonical})
    return records


def reworded_records(records: list[dict], entities: list[dict], rng: random.Random, questions: dict
                     ) -> list[dict]:
    """The same records (same facts, answers and order), each question in one of questions[attr]'s wordings,
    drawn at random: as many examples as the one-wording set, so the two differ in diversity only."""
    by_name = {e["name"]: e for e in entities}
    wordings = [rng.choice(questions[r["attribute"]]) for r in records]
    return [{**r, "instruction": sentence(wording, by_name[r["entity"]], r["attribute"]), "wording": wording}
            for r, wording in zip(records, wordings, strict=True)]


def prepare(out_dir: str = "data/world", n_people: int = 100, heldout_fraction: float = 0.25, rounds: int = 20,
            seed: int = 1337, n_countries: int = len(COUNTRIES),
            person_attributes: tuple[str, ...] = tuple(PERSON_VALUES)) -> dict:
    """Write the world's files (see the module docstring) and return world.json's content."""
    world = make_world(n_people, heldout_fraction, seed, n_countries, person_attributes)
    entities = world["entities"]
    heldout = [e for e in entities if e["split"] == "heldout"]
    sft = [e for e in entities if e["split"] == "sft"]
    # Each use of the seed draws from a generator of its own, named after it (a string seeds Python's generator
    # through SHA-512): a numeric offset (seed + 1) would draw from the next seed's world generator.
    rng = random.Random(f"{seed}:texts")
    texts = {
        "bios.txt": augmented_text(entities, rounds, rng, PHRASINGS),
        "bios_control.txt": augmented_text(sft, rounds, rng, PHRASINGS),
        "bios_single.txt": single_text(entities, rounds, rng),
    }
    sft_qa, heldout_qa = qa_records(sft), qa_records(heldout)
    rng.shuffle(sft_qa)  # so that any prefix (the data-size curve's subsets) mixes entities and attributes
    # (a generator of their own: the other files of a seed do not depend on them)
    sft_qa_diverse = reworded_records(sft_qa, sft, random.Random(f"{seed}:diverse"), QUESTIONS_DIVERSE)
    sft_qa_many = reworded_records(sft_qa, sft, random.Random(f"{seed}:many"), QUESTIONS_MANY)
    heldout_qa_unseen = qa_records(heldout, QUESTIONS_UNSEEN)
    os.makedirs(out_dir, exist_ok=True)
    for filename, text in texts.items():
        with open(os.path.join(out_dir, filename), "w", encoding="utf-8") as f:
            f.write(text)
    for filename, content in (("sft_qa.json", sft_qa), ("heldout_qa.json", heldout_qa), ("world.json", world),
                              ("sft_qa_diverse.json", sft_qa_diverse), ("sft_qa_many.json", sft_qa_many),
                              ("heldout_qa_unseen.json", heldout_qa_unseen)):
        with open(os.path.join(out_dir, filename), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)
            f.write("\n")
    print(f"world: {n_countries} countries, {n_people} people; held out: {len(heldout)} entities, "
          f"{len(heldout_qa)} questions; SFT: {len(sft)} entities, {len(sft_qa)} questions")
    print(f"pretraining text: {len(texts['bios.txt']):,} characters ({rounds} rounds); wrote {out_dir}/")
    return world


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--out_dir", default="data/world")
    parser.add_argument("--n_people", type=int, default=100)
    parser.add_argument("--n_countries", type=int, default=len(COUNTRIES), help="the first this many (France first)")
    parser.add_argument("--heldout_fraction", type=float, default=0.25, help="share of entities held out of SFT")
    parser.add_argument("--rounds", type=int, default=20, help="biographies per entity in the pretraining text")
    parser.add_argument("--person_attributes", default=",".join(PERSON_VALUES),
                        help="the people's attributes, comma-separated (a smaller world has fewer)")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    prepare(args.out_dir, args.n_people, args.heldout_fraction, args.rounds, args.seed, args.n_countries,
            tuple(a.strip() for a in args.person_attributes.split(",") if a.strip()))


if __name__ == "__main__":
    errors.report_user_errors()
    main()
