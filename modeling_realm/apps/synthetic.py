"""A synthetic knowledge corpus: short biographies of invented people, and questions whose answers are in them.

The names, places and works are made up from syllables with a seeded generator, so no pretrained model can know
the answers: a system answers them only by retrieving the right document. Used by the offline demo (`realm-qa`
with no model) and by the pretraining benchmarks. Everything is generated, no data is copied.
"""

import random
from dataclasses import dataclass

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk", "x"]
PROFESSIONS = ["painter", "astronomer", "composer", "architect", "botanist", "chemist", "poet", "sculptor",
               "cartographer", "engineer", "physician", "historian", "novelist", "violinist", "geologist"]
WORKS = {"painter": "the painting", "astronomer": "the discovery of the comet", "composer": "the symphony",
         "architect": "the tower of", "botanist": "the study of the flower", "chemist": "the synthesis of",
         "poet": "the poem", "sculptor": "the statue", "cartographer": "the map of", "engineer": "the bridge of",
         "physician": "the cure for", "historian": "the chronicle of", "novelist": "the novel",
         "violinist": "the concerto", "geologist": "the survey of"}
COUNTRIES_PER_CITY = 3


@dataclass
class Person:
    name: str
    city: str
    country: str
    year: int
    profession: str
    work: str
    teacher: str | None = None


def invented_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def invent_people(num_people: int, seed: int = 0) -> list[Person]:
    """`num_people` invented people with distinct names, spread over invented cities and countries."""
    rng = random.Random(seed)
    countries = _distinct(rng, max(2, num_people // 20), 2)
    cities = {city: rng.choice(countries) for city in _distinct(rng, max(3, num_people // 5), 2)}
    names = _distinct(rng, 2 * num_people, 2)
    people = []
    for i in range(num_people):
        city = rng.choice(sorted(cities))
        profession = rng.choice(PROFESSIONS)
        work = f"{WORKS[profession]} {invented_word(rng, 2)}"
        name = f"{names[2 * i]} {names[2 * i + 1]}".title()
        people.append(Person(name, city.title(), cities[city].title(), rng.randint(1500, 1950), profession, work))
    for person in people[1:]:
        person.teacher = rng.choice(people[:people.index(person)]).name if rng.random() < 0.5 else None
    return people


def _distinct(rng: random.Random, count: int, syllables: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        words[invented_word(rng, syllables)] = None
    return list(words)


def biography(person: Person) -> str:
    sentences = [f"{person.name} was a {person.profession} born in {person.city} in {person.year}.",
                 f"{person.city} is a city in {person.country}.",
                 f"{person.name} is best known for {person.work}."]
    if person.teacher:
        sentences.append(f"As a young {person.profession}, {person.name} studied under {person.teacher}.")
    return " ".join(sentences)


def documents(people: list[Person]) -> list[dict]:
    """One document per person: `doc_id`, `title` (the name) and `text` (the biography)."""
    return [{"doc_id": str(i), "title": person.name, "text": biography(person)} for i, person in enumerate(people)]


def questions(people: list[Person]) -> list[dict]:
    """Questions with answers found in the person's document: `question`, `answer` (list), `doc_id`."""
    items = []
    for i, person in enumerate(people):
        items += [{"question": f"where was {person.name} born?", "answer": [person.city]},
                  {"question": f"in which year was {person.name} born?", "answer": [str(person.year)]},
                  {"question": f"what was the profession of {person.name}?", "answer": [person.profession]},
                  {"question": f"what is {person.name} best known for?", "answer": [person.work]}]
        if person.teacher:
            items.append({"question": f"who was the teacher of {person.name}?", "answer": [person.teacher]})
        for item in items[-(5 if person.teacher else 4):]:
            item["doc_id"] = str(i)
    return items
